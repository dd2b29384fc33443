/* metrics.h (internal): machine-readable JSON lines (one event per line) in RUN_DIR/metrics.jsonl. */
#ifndef SOV_METRICS_H
#define SOV_METRICS_H

#include "sov_internal.h"

#include <jansson.h>
#include <stdio.h>

typedef struct sov_metrics {
    FILE *file;
    char path[4096];
} sov_metrics;

/* Creates run_dir if needed and opens run_dir/metrics.jsonl for appending. */
sov_status sov_metrics_open(sov_metrics *m, const char *run_dir);
/* Writes `event` (its reference is stolen) as one line and flushes it. No-op when m is not open. */
sov_status sov_metrics_emit(sov_metrics *m, json_t *event);
void sov_metrics_close(sov_metrics *m);

#endif
