/* ckpt_corrupt STEP_DIR [KEY_FILE]: every single-byte corruption of every file of a checkpoint is detected (an
 * encrypted one opened with its key).
 * For each byte of each file (manifest.json, rank-*.bin): change it (xor 0x5a), open and verify the checkpoint,
 * which must fail, then restore the byte. Prints the count and exits 1 on any undetected corruption. */
#include <sovtrain/ckpt.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static sov_ckpt_key *key;

static int detected(const char *dir) {
    sov_ckpt *c;
    if (sov_ckpt_open_key(dir, key, &c) != SOV_OK)
        return 1;
    sov_status st = sov_ckpt_verify(c);
    sov_ckpt_close(c);
    return st != SOV_OK;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && sov_ckpt_key_from_file(argv[2], &key) != SOV_OK)) {
        fprintf(stderr, "usage: ckpt_corrupt STEP_DIR [KEY_FILE] %s\n", sov_last_error());
        return 2;
    }
    if (detected(argv[1])) {
        fprintf(stderr, "ckpt_corrupt: %s does not verify to begin with: %s\n", argv[1], sov_last_error());
        return 1;
    }
    DIR *d = opendir(argv[1]);
    struct dirent *e;
    long tried = 0, missed = 0;
    int files = 0;
    while (d && (e = readdir(d))) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        struct stat sb;
        if (e->d_name[0] == '.' || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        int fd = open(path, O_RDWR);
        files++;
        for (off_t i = 0; fd >= 0 && i < sb.st_size; i++) {
            unsigned char orig, bad;
            if (pread(fd, &orig, 1, i) != 1)
                break;
            bad = orig ^ 0x5a;
            if (pwrite(fd, &bad, 1, i) != 1)
                break;
            tried++;
            if (!detected(argv[1])) {
                if (++missed <= 10)
                    fprintf(stderr, "UNDETECTED: %s byte %lld (0x%02x -> 0x%02x)\n", path, (long long)i, orig, bad);
            }
            if (pwrite(fd, &orig, 1, i) != 1)
                break;
        }
        if (fd >= 0)
            close(fd);
    }
    if (d)
        closedir(d);
    printf("%ld single-byte corruptions in %d files: %ld detected, %ld missed\n", tried, files, tried - missed,
           missed);
    if (detected(argv[1])) {
        fprintf(stderr, "ckpt_corrupt: the restored checkpoint no longer verifies: %s\n", sov_last_error());
        return 1;
    }
    return missed || tried == 0 ? 1 : 0;
}
