/* plan.h (internal): what one rank writes for one state.
 *
 * The state's tensors are packed into buffers by dtype: replicated tensors into "replicated.<dtype>", which every
 * rank holds and the ranks split between them (rank r writes elements [total*r/N, total*(r+1)/N) of the split
 * buffers taken end to end), and this rank's shards into "rank-<r>.<dtype>", which it writes whole. Packing keeps
 * a state of many small tensors in few chunks: each chunk costs a header and up to 4 KiB of alignment. */
#ifndef SOV_CKPT_PLAN_H
#define SOV_CKPT_PLAN_H

#include "catalog.h"

/* A run of a buffer's elements in the caller's memory: a tensor's data, in the order the buffer holds them. */
typedef struct sov_plan_source {
    const uint8_t *data;
    size_t count;
} sov_plan_source;

/* Part of one buffer inside this rank's share. */
typedef struct sov_plan_piece {
    int buffer;
    size_t offset, count; /* elements */
    size_t staging_at;    /* where it starts in the snapshot's staging: a multiple of SOV_PLAN_ALIGN */
} sov_plan_piece;

/* Each piece starts in staging at a multiple of this: the codec reads elements of up to 8 bytes, aligned. */
#define SOV_PLAN_ALIGN 64

typedef struct sov_plan {
    int rank, world;
    sov_catalog cat; /* the split buffers first (writer -1), then this rank's own; replicated tensors, then shards */
    int nsplit;      /* how many of cat.buffers are split */
    struct sov_plan_sources {
        sov_plan_source *runs;
        int n, cap;
    } *sources; /* per buffer */
    sov_plan_piece *pieces;
    int npieces;
    size_t share_bytes;        /* of staging: where the last piece ends */
    uint64_t replicated_digest; /* of the replicated tensors' names, dtypes and shapes: the same on every rank */
} sov_plan;

/* Checks the state (names unique and at most SOV_CKPT_MAX_NAME bytes, known dtypes, shapes, a shard inside its
 * tensor, data given) and plans this rank's part. */
sov_status sov_plan_make(sov_plan *p, const sov_ckpt_state *s, int rank, int world);
void sov_plan_free(sov_plan *p);

/* The caller's memory behind piece i, run by run in staging order: add(ctx, src, staging offset, bytes) for each. */
sov_status sov_plan_sources_of(const sov_plan *p, int i,
                               sov_status (*add)(void *ctx, const void *src, size_t at, size_t bytes), void *ctx);

/* Where the chunk of piece i that starts at buffer element `from` ends (exclusive): after at most chunk_elems
 * elements, at the piece's end, or at the edge of a large tensor (a quarter chunk or more; at its start only when
 * an eighth of a chunk or more lies before it, so that no tiny chunk is cut off). Large tensors then fill chunks
 * of their own: the coder's decisions, taken per chunk and plane, see one tensor's statistics (a chunk that
 * mixed weights and a second moment coded worse than either), and encoders can read a chunk straight from the
 * tensor's memory. Small tensors stay packed together. */
size_t sov_plan_chunk_end(const sov_plan *p, int i, size_t from, size_t chunk_elems);

/* Manifest parts: the split buffers and replicated tensors (rank 0 writes them), and this rank's own buffers,
 * its shards (each with its tensor's name, dtype and shape) and the digest, which go in its marker. */
json_t *sov_plan_buffers_json(const sov_plan *p, int own);
json_t *sov_plan_replicated_json(const sov_plan *p);
json_t *sov_plan_shards_json(const sov_plan *p);

#endif
