/* metrics.c: JSON-lines event log, written with jansson and flushed per event so a crash loses nothing. */
#include "metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

sov_status sov_metrics_open(sov_metrics *m, const char *run_dir) {
    SOV_CHECK(sov_mkdir_p(run_dir));
    snprintf(m->path, sizeof m->path, "%s/metrics.jsonl", run_dir);
    m->file = fopen(m->path, "a");
    if (!m->file)
        return sov_fail(SOV_ERR_IO, "cannot open %s for appending: %s", m->path, strerror(errno));
    return SOV_OK;
}

sov_status sov_metrics_emit(sov_metrics *m, json_t *event) {
    if (!m->file) {
        json_decref(event);
        return SOV_OK;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    json_object_set_new(event, "time", json_real((double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec));
    char *line = json_dumps(event, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(event);
    if (!line)
        return sov_fail(SOV_ERR_NOMEM, "%s: cannot serialise a metrics event", m->path);
    int bad = fprintf(m->file, "%s\n", line) < 0 || fflush(m->file) != 0;
    free(line);
    if (bad)
        return sov_fail(SOV_ERR_IO, "%s: write failed: %s", m->path, strerror(errno));
    return SOV_OK;
}

void sov_metrics_close(sov_metrics *m) {
    if (m->file)
        fclose(m->file);
    m->file = NULL;
}
