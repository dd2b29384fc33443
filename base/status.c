/* status.c: status names and the calling thread's last error. */
#include "sov_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#ifndef SOVTRAIN_VERSION
#define SOVTRAIN_VERSION "0.0.0"
#endif

const char *sov_version(void) { return SOVTRAIN_VERSION; }

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
