/* world.c: who this process is in the job, read from the launcher's environment. */
#include "sov_internal.h"

#include <errno.h>
#include <stdlib.h>

/* Parses environment variable `name` as a non-negative int. Returns 0 when unset, 1 when parsed, -1 when bad. */
static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s || !*s)
        return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > 1 << 24)
        return -1;
    *out = (int)v;
    return 1;
}

static sov_status read_set(sov_world *w, const char *src, const char *rank, const char *size,
                           const char *local_rank, const char *local_size) {
    const char *names[4] = {rank, size, local_rank, local_size};
    int *dst[4] = {&w->rank, &w->size, &w->local_rank, &w->local_size};
    for (int i = 0; i < 4; i++) {
        int r = env_int(names[i], dst[i]);
        if (r < 0)
            return sov_fail(SOV_ERR_INVALID, "environment variable %s=\"%s\" is not a non-negative integer",
                            names[i], getenv(names[i]));
        if (r == 0 && i < 2)
            return sov_fail(SOV_ERR_INVALID, "%s is set but %s is not: incomplete %s environment", names[0],
                            names[i], src);
        if (r == 0) /* local identity missing: assume one host */
            *dst[i] = i == 2 ? w->rank : w->size;
    }
    w->source = src;
    if (w->size < 1 || w->rank >= w->size || w->local_size < 1 || w->local_rank >= w->local_size)
        return sov_fail(SOV_ERR_INVALID, "%s environment is inconsistent: rank %d of %d, local rank %d of %d", src,
                        w->rank, w->size, w->local_rank, w->local_size);
    return SOV_OK;
}

sov_status sov_world_from_env(sov_world *w) {
    if (getenv("OMPI_COMM_WORLD_RANK"))
        return read_set(w, "openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "OMPI_COMM_WORLD_LOCAL_SIZE");
    if (getenv("RANK") && getenv("WORLD_SIZE"))
        return read_set(w, "torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE");
    *w = (sov_world){.rank = 0, .size = 1, .local_rank = 0, .local_size = 1, .source = "single"};
    return SOV_OK;
}

int sov_host_gpus(int visible) {
    const char *pinned = getenv("SOVTRAIN_HOST_GPUS");
    long n = 0;
    if (visible < 1 || !pinned || sov_parse_long("SOVTRAIN_HOST_GPUS", pinned, 1, 1 << 20, &n) != SOV_OK)
        return visible;
    return (int)n;
}
