/* rank_env.c: `sovtrain _rank CMD ARGS...`, the first thing every rank runs under `sovtrain launch`: it gives
 * the rank torchrun's variables, derived from Open MPI's, and its GPU, then becomes CMD (exec). */
#include <sovtrain/launch.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void set_int(const char *name, int v) {
    char buf[16];
    snprintf(buf, sizeof buf, "%d", v);
    setenv(name, buf, 1);
}

/* GPUs the driver shows (/proc/driver/nvidia/gpus has one entry per GPU); 0 without the driver. */
static int driver_gpus(void) {
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* One GPU per local rank: the local_rank-th of CUDA_VISIBLE_DEVICES when it lists several, else of the GPUs the
 * driver shows. */
static void pin_gpu(int local_rank) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (visible && *visible) {
        char copy[1024], *save, *tok;
        int n = 0;
        snprintf(copy, sizeof copy, "%s", visible);
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            n++;
        snprintf(copy, sizeof copy, "%s", visible);
        tok = strtok_r(copy, ",", &save);
        for (int i = 0; tok && i < local_rank % (n ? n : 1); i++)
            tok = strtok_r(NULL, ",", &save);
        if (tok)
            setenv("CUDA_VISIBLE_DEVICES", tok, 1);
        set_int("SOVTRAIN_HOST_GPUS", n); /* what the rank's GPU was picked from: `train --device auto` reads it */
        return;
    }
    int gpus = driver_gpus();
    if (gpus > 0) {
        set_int("CUDA_VISIBLE_DEVICES", local_rank % gpus);
        set_int("SOVTRAIN_HOST_GPUS", gpus);
    }
}

int sov_rank_main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "sovtrain _rank: no command (this is run by `sovtrain launch` on every rank)\n");
        return 2;
    }
    sov_world w;
    if (sov_world_from_env(&w) != SOV_OK) {
        fprintf(stderr, "sovtrain _rank: %s\n", sov_last_error());
        return 2;
    }
    set_int("RANK", w.rank);
    set_int("WORLD_SIZE", w.size);
    set_int("LOCAL_RANK", w.local_rank);
    set_int("LOCAL_WORLD_SIZE", w.local_size);
    set_int("NODE_RANK", w.rank / w.local_size); /* ranks are placed by slot: host h holds ranks h*L .. h*L+L-1 */
    set_int("GROUP_RANK", w.rank / w.local_size);
    pin_gpu(w.local_rank);
    execvp(argv[1], argv + 1);
    fprintf(stderr, "sovtrain launch: rank %d cannot run %s: %s\n", w.rank, argv[1], strerror(errno));
    return 127;
}
