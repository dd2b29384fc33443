/* snapshot.h (internal): the snapshot of one save, shared by the caller that copies the state into staging and the
 * encoders that compress it.
 *
 * The state is final in staging in two places: a prefix copied front to back (states copied in one go, and states
 * on a GPU, which the encoders cannot read), and a suffix copied back to front. The second way is for a large host
 * state: while the caller is inside save the state cannot change, so the encoders take their first chunks straight
 * from it, front to back, while the caller copies from the back. Neither copies what the other has read, and the
 * save returns when they meet and no encoder is still reading the state. (Copying from the front while one encoder
 * followed it, the 256 MiB bf16 state took a 25 ms stall in which the disk waited ~0.7 ms for each chunk: one core
 * encodes slower than the disk writes.) */
#ifndef SOV_CKPT_SNAPSHOT_H
#define SOV_CKPT_SNAPSHOT_H

#include "sov_internal.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sov_snapshot {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    uint8_t *staging;
    size_t share; /* bytes of staging in this save */
    int npieces, pieces_cap;
    struct sov_snapshot_piece {
        const void *src; /* the state's bytes (host memory, or a GPU's: see open) */
        size_t at, bytes; /* where they go in staging */
    } *pieces;
    size_t prefix;       /* staging[0, prefix) is final */
    size_t copied_from;  /* staging[copied_from, share) is final */
    size_t copy_floor;   /* the copy in progress is of [copy_floor, copied_from): encoders keep below it */
    size_t claimed;      /* staging[0, claimed) is read by encoders from the pieces, and never copied */
    int readers;         /* encoders reading a piece now */
    int open;            /* encoders may read the pieces: host memory, and the caller is inside save */
    int done, failed;
} sov_snapshot;

void sov_snapshot_init(sov_snapshot *s);
void sov_snapshot_destroy(sov_snapshot *s);

/* A new save: staging of share bytes, nothing final yet, the pieces added next. */
void sov_snapshot_begin(sov_snapshot *s, uint8_t *staging, size_t share, int sources_readable);
/* The next piece: bytes of src go to staging[at, at + bytes), at or after the end of the previous piece (the gap
 * between them is never read); sov_snapshot_add puts it right after the previous one. A piece that starts where the
 * previous one ends, in staging and in memory, extends it (tensors that are views of one allocation copy as one). */
sov_status sov_snapshot_add_at(sov_snapshot *s, const void *src, size_t at, size_t bytes);
sov_status sov_snapshot_add(sov_snapshot *s, const void *src, size_t bytes);

/* Encoders, chunk by chunk in staging order (the caller holds the lock that orders them): when the encoder may
 * read staging[a, b)'s bytes from the state itself, the piece's bytes, or, for a chunk that spans pieces (small
 * tensors packed together) or an unaligned one, staging + a with *gather set: the encoder copies them there with
 * sov_snapshot_gather (outside the caller's lock) before reading. Call sov_snapshot_release when done. Else NULL:
 * wait with sov_snapshot_final and read staging. */
const uint8_t *sov_snapshot_claim(sov_snapshot *s, size_t a, size_t b, int *gather);
void sov_snapshot_gather(sov_snapshot *s, size_t a, size_t b);
void sov_snapshot_release(sov_snapshot *s);
/* Waits until staging[a, b) is final; an error if the snapshot failed. */
sov_status sov_snapshot_final(sov_snapshot *s, size_t a, size_t b);
/* Waits until the whole snapshot is final; an error if it failed. */
sov_status sov_snapshot_wait_done(sov_snapshot *s);
int sov_snapshot_has_failed(sov_snapshot *s);

/* The copies, by the caller of save. copy(ctx, dst, src, n) copies one span; block is the largest span. */
typedef sov_status (*sov_snapshot_copy_fn)(void *ctx, void *dst, const void *src, size_t bytes);
/* Front to back, span by span; after_first (may be NULL) runs once the first `first` bytes are final. */
sov_status sov_snapshot_copy_forward(sov_snapshot *s, sov_snapshot_copy_fn copy, void *ctx, size_t first,
                                     size_t block, sov_status (*after_first)(void *arg), void *arg);
/* Back to front, beside encoders that read the front from the pieces; returns when the whole share is final or
 * read, and no encoder reads a piece any more. */
void sov_snapshot_copy_backward(sov_snapshot *s, sov_snapshot_copy_fn copy, void *ctx, size_t block);

#endif
