/* stream.h (internal): one file written front to back and then made durable, as fast as the disk allows.
 *
 * Where the filesystem supports it, the file is written with O_DIRECT: data goes from reused, aligned buffers
 * straight to the disk, with no copy into the page cache and no page-cache memory to allocate (on these VMs a
 * fresh page costs more than the copy), and the final fsync has nothing left to flush. A helper thread writes the
 * blocks in order while the caller fills the next ones, in a ring of four: when the disk finishes a block the next
 * one is usually waiting, even if the caller was late with it; and when the disk has nothing to do, a block that
 * holds 1 MiB or more goes at once, partly filled. Elsewhere (or with SOVTRAIN_CKPT_DIRECT=0) writes are
 * buffered and written back window by window while the caller goes on. */
#ifndef SOV_CKPT_STREAM_H
#define SOV_CKPT_STREAM_H

#include "sov.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SOV_STREAM_ALIGN 4096
#define SOV_STREAM_BLOCK ((size_t)4 << 20) /* one direct write */
#define SOV_STREAM_BLOCKS 4                /* the ring */
#define SOV_STREAM_EAGER ((size_t)1 << 20) /* a part of a block this large is written at once when the disk idles */
#define SOV_STREAM_SCRATCH (SOV_STREAM_BLOCKS * SOV_STREAM_BLOCK) /* the scratch a stream needs */

typedef struct sov_stream {
    int fd;
    int direct;       /* 1 when writing with O_DIRECT */
    char path[4400];
    uint8_t *buf[SOV_STREAM_BLOCKS]; /* SOV_STREAM_BLOCK bytes each, within the caller's scratch */
    int cur;          /* direct: the block being filled; the caller's alone */
    size_t fill;      /* bytes waiting in it */
    uint64_t pos;     /* bytes written by the caller */
    uint64_t begun;   /* buffered: writeback started for [0, begun) */
    uint64_t waited;  /* buffered: [0, waited) is on the disk */
    /* direct: the helper thread and the blocks queued for it, buf[head] (being written) onwards; under lock */
    pthread_t io;
    int io_started;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int head, queued;
    size_t io_bytes[SOV_STREAM_BLOCKS];
    uint64_t io_offset[SOV_STREAM_BLOCKS];
    int io_stop;
    sov_status io_status; /* the first failed write, with its message */
    char io_error[512];
} sov_stream;

/* Creates (truncates) path. `scratch` is SOV_STREAM_SCRATCH bytes aligned to SOV_STREAM_ALIGN, reused across
 * streams by the caller. */
sov_status sov_stream_open(sov_stream *s, const char *path, void *scratch);
sov_status sov_stream_write(sov_stream *s, const void *data, size_t n);
/* Writes what is buffered, gives the file its exact size, fsyncs and closes it. */
sov_status sov_stream_close(sov_stream *s);
/* After an error: closes and removes the file (a full disk gets its space back). */
void sov_stream_discard(sov_stream *s);

#endif
