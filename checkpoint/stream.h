/* stream.h (internal): a data file written record by record, straight from the caller's buffers, then made
 * durable.
 *
 * Records start at multiples of SOV_STREAM_ALIGN (format version 3, docs/checkpoint-format.md): the caller's
 * record buffer is aligned and has room up to the next multiple, which the stream fills with zeros and writes with
 * the record. Where the filesystem supports it, the file is written with O_DIRECT, from those buffers to the disk:
 * no copy into a write buffer or the page cache, and no page-cache memory to allocate (on these VMs a fresh page
 * costs more than the copy); the final fsync has nothing left to flush. Elsewhere (or with SOVTRAIN_CKPT_DIRECT=0)
 * writes are buffered and written back window by window while the caller goes on. */
#ifndef SOV_CKPT_STREAM_H
#define SOV_CKPT_STREAM_H

#include "sov_internal.h"

#include <stddef.h>
#include <stdint.h>

#define SOV_STREAM_ALIGN 4096

typedef struct sov_stream {
    int fd;
    int direct;     /* 1 when writing with O_DIRECT */
    char path[4400];
    uint64_t pos;   /* where the next record goes: a multiple of SOV_STREAM_ALIGN */
    uint64_t end;   /* the end of the last record: the file's size once closed */
    uint64_t begun; /* buffered: writeback started for [0, begun) */
    uint64_t waited; /* buffered: [0, waited) is on the disk */
} sov_stream;

/* n rounded up to the alignment: the room a record of n bytes needs in its buffer. */
static inline size_t sov_stream_padded(size_t n) {
    return (n + SOV_STREAM_ALIGN - 1) / SOV_STREAM_ALIGN * SOV_STREAM_ALIGN;
}

/* Creates (truncates) path. */
sov_status sov_stream_open(sov_stream *s, const char *path);
/* Appends the n bytes at `record` (aligned to SOV_STREAM_ALIGN, with room for sov_stream_padded(n) bytes, past n
 * zeroed here) at the next aligned offset, which it returns in *offset. Returns once the buffer may be reused. */
sov_status sov_stream_append(sov_stream *s, uint8_t *record, size_t n, uint64_t *offset);
/* Gives the file its exact size (the last record's end), fsyncs and closes it. */
sov_status sov_stream_close(sov_stream *s);
/* After an error: closes and removes the file (a full disk gets its space back). */
void sov_stream_discard(sov_stream *s);

#endif
