/* chunk_reader.h (internal): reads a checkpoint's chunks from its data files and decodes them, with every core
 * decoding while the disk is kept busy.
 *
 * Reading and decoding run on separate threads. Fetchers only read: each takes the next chunk in file order and a
 * free buffer, and reads the chunk into it (O_DIRECT where the filesystem allows it). Decoders only decode: each
 * takes any chunk that has been read, checks and decodes it into place, and frees its buffer. With a thread doing
 * both in turn, the reads of all threads came back together and the disk then stood idle while all of them
 * decoded (a quarter of a restore's time on the development VM). */
#ifndef SOV_CKPT_CHUNK_READER_H
#define SOV_CKPT_CHUNK_READER_H

#include "crypto.h"
#include "sov_internal.h"
#include <sovtrain/ckpt.h>

#include <stddef.h>
#include <stdint.h>

/* A box that is not one run in both the shard and the destination (a column of a row-major tensor): the shard's
 * elements of the box [in_shard, in_shard + part), whose shard starts at element `at` of its buffer, go to the box
 * [in_req, in_req + part) of a destination of shape req_shape, row by row. */
typedef struct sov_box_scatter {
    int ndim; /* >= 2: a box of fewer dimensions is always one run */
    size_t at, elem_bytes;
    int64_t shard_shape[SOV_CKPT_MAX_DIMS], in_shard[SOV_CKPT_MAX_DIMS];
    int64_t req_shape[SOV_CKPT_MAX_DIMS], in_req[SOV_CKPT_MAX_DIMS], part[SOV_CKPT_MAX_DIMS];
} sov_box_scatter;

/* Where a chunk's elements go: the buffer's elements [lo, hi) that it holds, copied to dst (element lo first), or
 * with `box`, scattered into the box's rows at dst. */
typedef struct sov_chunk_window {
    size_t lo, hi;
    uint8_t *dst;
    const sov_box_scatter *box;
} sov_chunk_window;

typedef struct sov_chunk_ref {
    size_t file;        /* index into the files given to sov_chunk_reader_run */
    size_t elem_offset; /* where in its buffer it goes, in elements */
    size_t elems;
    size_t elem_bytes; /* of its buffer */
    uint64_t file_offset, bytes;
    size_t pad; /* bytes of zeros after it in the file (to the next chunk's aligned start), checked */
    uint64_t index; /* its place among its file's chunks (an encrypted checkpoint's nonce and header name it) */
    int last;       /* the last chunk of its file */
    /* What the chunk delivers (none: verify only, decoded and dropped). A single window that takes the whole
     * chunk gets it decoded in place; otherwise it is decoded into scratch and each window copies its part. */
    const sov_chunk_window *windows;
    int nwindows;
} sov_chunk_ref;

/* 1 when the chunk decodes straight into its one window, which takes all of it, at an address aligned for its
 * elements (the decoder stores whole elements). */
static inline int sov_chunk_in_place(const sov_chunk_ref *c) {
    return c->nwindows == 1 && !c->windows[0].box && c->windows[0].lo <= c->elem_offset &&
           c->elem_offset + c->elems <= c->windows[0].hi &&
           (uintptr_t)(c->windows[0].dst + (c->elem_offset - c->windows[0].lo) * c->elem_bytes) % c->elem_bytes == 0;
}

/* Codecs and buffers, made at the first run and reused by the next ones (made anew for bigger chunks). */
typedef struct sov_chunk_reader sov_chunk_reader;

sov_status sov_chunk_reader_create(sov_chunk_reader **out);
void sov_chunk_reader_destroy(sov_chunk_reader *r);

/* An encrypted checkpoint's chunks are sealed (crypto.h): with file_keys (one per file), each is authenticated
 * and decrypted before it is decoded; without them, only its stored bytes are checked (and it must have no
 * windows). */
typedef struct sov_chunk_keys {
    int sealed;
    const sov_key *file_keys;
} sov_chunk_keys;

/* Reads and decodes refs[0..n), each into its windows (or into scratch where it has none), from
 * dir/files[ref.file]. Chunks are taken in the order given (sort them by file and offset for sequential reads).
 * Fails with the first error met, naming the file and the chunk's offset. keys: NULL for a plain checkpoint. */
sov_status sov_chunk_reader_run(sov_chunk_reader *r, const char *dir, const char *const *files,
                                const sov_chunk_ref *refs, size_t n, const sov_chunk_keys *keys);

#endif
