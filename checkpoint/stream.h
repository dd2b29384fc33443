/* stream.h (internal): one file written front to back and then made durable, as fast as the disk allows.
 *
 * Where the filesystem supports it, the file is written with O_DIRECT: data goes from a reused, aligned buffer
 * straight to the disk, with no copy into the page cache and no page-cache memory to allocate (on these VMs a
 * fresh page costs more than the copy), and the final fsync has nothing left to flush. Elsewhere (or with
 * SOVTRAIN_CKPT_DIRECT=0) writes are buffered and written back window by window while the caller goes on. */
#ifndef SOV_CKPT_STREAM_H
#define SOV_CKPT_STREAM_H

#include "sov.h"

#include <stddef.h>
#include <stdint.h>

#define SOV_STREAM_ALIGN 4096
#define SOV_STREAM_BUFFER ((size_t)4 << 20) /* the scratch a stream needs: the size of one direct write */

typedef struct sov_stream {
    int fd;
    int direct;       /* 1 when writing with O_DIRECT */
    char path[4400];
    uint8_t *buf;     /* SOV_STREAM_BUFFER bytes, SOV_STREAM_ALIGN-aligned, owned by the caller */
    size_t fill;      /* bytes waiting in buf (direct) */
    uint64_t pos;     /* bytes written by the caller */
    uint64_t begun;   /* buffered: writeback started for [0, begun) */
    uint64_t waited;  /* buffered: [0, waited) is on the disk */
} sov_stream;

/* Creates (truncates) path. `scratch` is SOV_STREAM_BUFFER bytes aligned to SOV_STREAM_ALIGN, reused across
 * streams by the caller. */
sov_status sov_stream_open(sov_stream *s, const char *path, void *scratch);
sov_status sov_stream_write(sov_stream *s, const void *data, size_t n);
/* Writes what is buffered, gives the file its exact size, fsyncs and closes it. */
sov_status sov_stream_close(sov_stream *s);
/* After an error: closes and removes the file (a full disk gets its space back). */
void sov_stream_discard(sov_stream *s);

#endif
