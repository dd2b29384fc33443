/* status.c: error recording, checked allocation, rank-tagged logging. */
#include "sov.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[1024];
static _Thread_local char last_where[128];

const char *sov_strerror(sov_status status) {
    switch (status) {
    case SOV_OK: return "success";
    case SOV_ERR_INVALID: return "invalid argument";
    case SOV_ERR_IO: return "I/O error";
    case SOV_ERR_FORMAT: return "malformed input";
    case SOV_ERR_NOMEM: return "out of memory";
    case SOV_ERR_COMM: return "communication error";
    case SOV_ERR_UNSUPPORTED: return "unsupported";
    case SOV_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

sov_status sov_fail_at(sov_status status, const char *file, int line, const char *fmt, ...) {
    const char *base = strrchr(file, '/');
    snprintf(last_where, sizeof last_where, "%s:%d", base ? base + 1 : file, line);
    char message[sizeof last_error]; /* the arguments may include sov_last_error() itself, to add context */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    memcpy(last_error, message, sizeof last_error);
    return status;
}

const char *sov_last_error(void) { return last_error; }
const char *sov_last_error_where(void) { return last_where; }

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

static char log_prefix[32];
static int log_rank;

void sov_log_set_rank(int rank, int world_size) {
    log_rank = rank;
    const char *tagged = getenv("SOVTRAIN_TAGGED_OUTPUT");
    if (world_size > 1 && !(tagged && strcmp(tagged, "1") == 0))
        snprintf(log_prefix, sizeof log_prefix, "[rank %d] ", rank);
    else
        log_prefix[0] = '\0';
}

static void log_line(const char *kind, const char *fmt, va_list ap) {
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    /* One fprintf per line so that lines from concurrent ranks do not interleave mid-line. */
    fprintf(stderr, "%s%s%s\n", log_prefix, kind, buf);
    fflush(stderr);
}

void sov_log(const char *fmt, ...) {
    if (log_rank != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line("", fmt, ap);
    va_end(ap);
}

void sov_log_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line("error: ", fmt, ap);
    va_end(ap);
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
