/* log.c: rank-tagged human lines on stderr. */
#include "sov_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
