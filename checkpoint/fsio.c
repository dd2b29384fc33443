/* fsio.c: see fsio.h. */
#include "fsio.h"

#include <openssl/crypto.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

sov_status sov_write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? (size_t)1 << 30 : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return sov_fail(SOV_ERR_IO, "writing %s: %s", path, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return SOV_OK;
}

#define HUGE_PAGE ((size_t)2 << 20)
#define SMALL_PAGE ((size_t)4096)

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* The mapped size: whole huge pages from one up, so that the end of a buffer is not left in small pages. */
static size_t io_size(size_t bytes) {
    return bytes >= HUGE_PAGE ? round_up(bytes, HUGE_PAGE) : round_up(bytes ? bytes : 1, SMALL_PAGE);
}

void *sov_io_alloc(size_t bytes) {
    size_t size = io_size(bytes);
    uint8_t *map = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    uint8_t *buf = (uint8_t *)round_up((uintptr_t)map, HUGE_PAGE);
    if (buf > map) /* give back the slack before and after the aligned buffer */
        munmap(map, (size_t)(buf - map));
    if (map + size + HUGE_PAGE > buf + size)
        munmap(buf + size, (size_t)(map + size + HUGE_PAGE - (buf + size)));
    (void)madvise(buf, size, MADV_HUGEPAGE); /* a hint: refused (THP off), the buffer only moves slower */
    return buf;
}

void sov_io_free(void *buf, size_t bytes) {
    if (buf)
        munmap(buf, io_size(bytes));
}

sov_status sov_pread_all(int fd, void *buf, size_t n, off_t offset, const char *path) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return sov_fail(SOV_ERR_IO, "reading %s: %s", path, strerror(errno));
        if (r == 0)
            return sov_fail(SOV_ERR_FORMAT, "%s: truncated (ends %zu bytes early at offset %lld)", path, n,
                            (long long)offset);
        p += r;
        n -= (size_t)r;
        offset += r;
    }
    return SOV_OK;
}

sov_status sov_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "opening %s to fsync it: %s", path, strerror(errno));
    int rc = fsync(fd), e = errno;
    close(fd);
    return rc == 0 ? SOV_OK : sov_fail(SOV_ERR_IO, "fsync %s: %s", path, strerror(e));
}

sov_status sov_write_file_atomic(const char *dir, const char *name, const void *data, size_t n) {
    char tmp[4200], final[4200];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "creating %s: %s", tmp, strerror(errno));
    sov_status st = sov_write_all(fd, data, n, tmp);
    if (st == SOV_OK && fsync(fd) != 0)
        st = sov_fail(SOV_ERR_IO, "fsync %s: %s", tmp, strerror(errno));
    close(fd);
    if (st == SOV_OK && rename(tmp, final) != 0)
        st = sov_fail(SOV_ERR_IO, "renaming %s to %s: %s", tmp, final, strerror(errno));
    if (st != SOV_OK) {
        unlink(tmp);
        return st;
    }
    return sov_fsync_path(dir);
}

sov_status sov_read_file(const char *path, size_t max, char **data, size_t *n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || (size_t)sb.st_size > max) {
        close(fd);
        return sov_fail(SOV_ERR_FORMAT, "%s: larger than the %zu bytes such a file may have", path, max);
    }
    char *buf = sov_malloc((size_t)sb.st_size + 1);
    sov_status st = buf ? sov_pread_all(fd, buf, (size_t)sb.st_size, 0, path) : SOV_ERR_NOMEM;
    close(fd);
    if (st != SOV_OK) {
        free(buf);
        return st;
    }
    buf[sb.st_size] = '\0';
    *data = buf;
    *n = (size_t)sb.st_size;
    return SOV_OK;
}

sov_status sov_remove_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d)
        return errno == ENOENT ? SOV_OK : sov_fail(SOV_ERR_IO, "opening %s: %s", path, strerror(errno));
    struct dirent *e;
    char file[4400];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(file, sizeof file, "%s/%s", path, e->d_name);
            unlink(file);
        }
    closedir(d);
    return rmdir(path) == 0 || errno == ENOENT ? SOV_OK : sov_fail(SOV_ERR_IO, "removing %s: %s", path, strerror(errno));
}

/* The `digits` hex digits of the field `key` (quoted) inside text, or NULL. The seal is the manifest's last key
 * and the MAC the one before it, so the last occurrence counts (a key of the same name inside "meta" or a tensor's
 * name cannot take its place). */
static char *hex_field(const char *text, size_t n, const char *key, int digits) {
    const char *found = NULL;
    for (const char *p = strstr(text, key); p; p = strstr(p + 1, key))
        found = p;
    if (!found)
        return NULL;
    const char *p = found + strlen(key);
    while (*p == ' ' || *p == ':')
        p++;
    if (*p != '"' || (size_t)(p + digits + 2 - text) > n || p[digits + 1] != '"')
        return NULL;
    for (int i = 1; i <= digits; i++)
        if (!strchr("0123456789abcdef", p[i]) || !p[i])
            return NULL;
    return (char *)p + 1;
}

static char *seal_digits(const char *text, size_t n) { return hex_field(text, n, SOV_MANIFEST_SEAL_KEY, 16); }

sov_status sov_manifest_seal(char *text, size_t n) {
    char *digits = seal_digits(text, n);
    if (!digits)
        return sov_fail(SOV_ERR_INTERNAL, "manifest has no seal field");
    memset(digits, '0', 16);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)XXH3_64bits(text, n));
    memcpy(digits, hex, 16);
    return SOV_OK;
}

sov_status sov_manifest_check(const char *text, size_t n, const char *where) {
    char *copy = sov_malloc(n + 1);
    if (!copy)
        return SOV_ERR_NOMEM;
    memcpy(copy, text, n);
    copy[n] = '\0';
    char *digits = seal_digits(copy, n);
    sov_status st = SOV_OK;
    if (!digits) {
        st = sov_fail(SOV_ERR_FORMAT, "%s: no \"manifest_xxh3\" seal: not a sovtrain manifest, or damaged", where);
    } else {
        char stored[17];
        memcpy(stored, digits, 16);
        stored[16] = '\0';
        memset(digits, '0', 16);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)XXH3_64bits(copy, n));
        if (strcmp(hex, stored) != 0)
            st = sov_fail(SOV_ERR_FORMAT, "%s: manifest checksum mismatch (stored %s, computed %s): the manifest is "
                          "damaged", where, stored, hex);
    }
    free(copy);
    return st;
}

#define MAC_KEY "\"manifest_mac\""

/* The HMAC of the text with the seal's and the MAC's digits zeroed, into hex (65 bytes). */
static sov_status mac_hex(char *text, size_t n, const sov_key *key, char *hex) {
    char *seal = seal_digits(text, n), *mac = hex_field(text, n, MAC_KEY, 64);
    if (!seal || !mac)
        return sov_fail(SOV_ERR_FORMAT, "no \"manifest_mac\" before the seal");
    memset(seal, '0', 16);
    memset(mac, '0', 64);
    uint8_t digest[32];
    SOV_CHECK(sov_hmac(key, text, n, digest));
    sov_hex(digest, 32, hex);
    return SOV_OK;
}

sov_status sov_manifest_mac(char *text, size_t n, const sov_key *key) {
    char hex[65];
    SOV_CHECK(mac_hex(text, n, key, hex));
    memcpy(hex_field(text, n, MAC_KEY, 64), hex, 64);
    return SOV_OK;
}

sov_status sov_manifest_mac_check(const char *text, size_t n, const sov_key *key, const char *where) {
    char *copy = sov_malloc(n + 1);
    if (!copy)
        return SOV_ERR_NOMEM;
    memcpy(copy, text, n);
    copy[n] = '\0';
    char *mac = hex_field(copy, n, MAC_KEY, 64), stored[65], hex[65];
    sov_status st = mac ? SOV_OK : sov_fail(SOV_ERR_FORMAT, "%s: an encrypted checkpoint's manifest without its "
                                            "\"manifest_mac\": damaged or tampered with", where);
    if (st == SOV_OK) {
        memcpy(stored, mac, 64);
        stored[64] = '\0';
        st = mac_hex(copy, n, key, hex);
    }
    if (st == SOV_OK && CRYPTO_memcmp(hex, stored, 64) != 0)
        st = sov_fail(SOV_ERR_FORMAT, "%s: the manifest does not match its MAC (HMAC-SHA256 under this checkpoint's "
                      "data key): it was tampered with, or the data key given is another checkpoint's", where);
    free(copy);
    return st;
}

sov_status sov_manifest_store(const char *dir, json_t *m, const sov_key *mac_key, char **text_out, size_t *n_out) {
    if (mac_key)
        json_object_set_new(m, "manifest_mac", json_string(SOV_MANIFEST_MAC_ZERO));
    json_object_set_new(m, "manifest_xxh3", json_string("0000000000000000"));
    char *text = json_dumps(m, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (!text)
        return sov_fail(SOV_ERR_NOMEM, "%s: cannot serialise the manifest", dir);
    size_t n = strlen(text);
    sov_status st = mac_key ? sov_manifest_mac(text, n, mac_key) : SOV_OK;
    if (st == SOV_OK)
        st = sov_manifest_seal(text, n);
    if (st == SOV_OK)
        st = sov_write_file_atomic(dir, "manifest.json", text, n);
    if (st == SOV_OK && text_out) {
        *text_out = text;
        *n_out = n;
    } else {
        free(text);
    }
    return st;
}
