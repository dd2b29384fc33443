/* util.c: checked allocation, clocks, CPU counts, and small parsers and file helpers every module uses. */
#include "sov_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void *sov_malloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        sov_fail_at(SOV_ERR_NOMEM, file, line, "allocating %zu bytes failed", bytes);
    return p;
}

void *sov_calloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        sov_fail_at(SOV_ERR_NOMEM, file, line, "allocating %zu x %zu bytes failed", count, size);
    return p;
}

void *sov_aligned_alloc_at(size_t bytes, const char *file, int line) {
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        sov_fail_at(SOV_ERR_NOMEM, file, line, "allocating %zu aligned bytes failed", bytes);
        return NULL;
    }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

double sov_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int sov_usable_cpus(void) {
    cpu_set_t mask;
    long cpus = sched_getaffinity(0, sizeof mask, &mask) == 0 ? CPU_COUNT(&mask) : sysconf(_SC_NPROCESSORS_ONLN);
    return cpus < 1 ? 1 : cpus > 4096 ? 4096 : (int)cpus;
}

sov_status sov_parse_long(const char *what, const char *text, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end || errno || v < lo || v > hi)
        return sov_fail(SOV_ERR_INVALID, "%s \"%s\": expected an integer in %ld..%ld", what, text, lo, hi);
    *out = v;
    return SOV_OK;
}

int sov_read_line(const char *path, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    int ok = f && fgets(out, (int)cap, f) != NULL;
    if (f)
        fclose(f);
    if (!ok)
        out[0] = '\0';
    else
        out[strcspn(out, "\r\n")] = '\0';
    return ok;
}

sov_status sov_mkdir_p(const char *path) {
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return sov_fail(SOV_ERR_INVALID, "directory path \"%s\" is empty or too long", path);
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return sov_fail(SOV_ERR_IO, "cannot create directory %s: %s", buf, strerror(errno));
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return sov_fail(SOV_ERR_IO, "%s exists and is not a directory", path);
    return SOV_OK;
}
