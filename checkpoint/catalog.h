/* catalog.h (internal): what a checkpoint holds, as tensors over buffers.
 *
 * A buffer is a flat run of elements of one dtype, the unit the writers split, chunk and checksum. A tensor lives
 * in one or more shards; a shard is a box of the tensor (offset and shape in every dimension), stored row-major as
 * a run of its buffer's elements from `at` on. A replicated tensor has one shard, the whole tensor. The writer
 * builds a catalog from the state it saves; the reader from a manifest, of any format version. */
#ifndef SOV_CKPT_CATALOG_H
#define SOV_CKPT_CATALOG_H

#include "sov_internal.h"
#include <sovtrain/ckpt.h>

#include <jansson.h>

/* The most elements a tensor or a buffer may have: far beyond any state, and small enough that byte sizes,
 * offsets and products of them never overflow. */
#define SOV_CKPT_MAX_ELEMS ((int64_t)1 << 40)
/* The most shards one tensor may have in a manifest (their tiling is checked pairwise). */
#define SOV_CKPT_MAX_SHARDS 16384

typedef struct sov_cat_buffer {
    char *name;
    sov_dtype dtype;
    size_t count;
    int writer; /* -1: split over every rank (replicated state); r: written whole by rank r (its shards) */
} sov_cat_buffer;

typedef struct sov_cat_shard {
    int buffer;
    size_t at; /* its first element in the buffer */
    int64_t offset[SOV_CKPT_MAX_DIMS], shape[SOV_CKPT_MAX_DIMS];
} sov_cat_shard;

typedef struct sov_cat_tensor {
    char *name;
    sov_dtype dtype;
    int ndim;
    int64_t shape[SOV_CKPT_MAX_DIMS];
    int nshards;
    sov_cat_shard *shards;
} sov_cat_tensor;

typedef struct sov_catalog {
    int nbuffers, ntensors;
    sov_cat_buffer *buffers;
    sov_cat_tensor *tensors;
    json_t *tensor_index, *buffer_index; /* name -> index, for lookups that stay fast with thousands of names */
} sov_catalog;

/* Elements of a box of `ndim` dimensions (1 for a scalar), or -1 beyond SOV_CKPT_MAX_ELEMS or for a negative
 * length. */
int64_t sov_box_volume(int ndim, const int64_t *shape);
/* 1 when the box [offset, offset + shape) lies inside `bounds`. */
int sov_box_inside(int ndim, const int64_t *offset, const int64_t *shape, const int64_t *bounds);
/* The intersection of two boxes into (offset, shape); returns 0 when it is empty. */
int sov_box_intersect(int ndim, const int64_t *a_off, const int64_t *a_shape, const int64_t *b_off,
                      const int64_t *b_shape, int64_t *offset, int64_t *shape);
/* Row-major index, inside a box of `shape`, of the element at `index` (coordinates relative to the box). */
int64_t sov_box_flat(int ndim, const int64_t *shape, const int64_t *index);
/* 1 when a sub-box of lengths `sub` of a box of `shape` is one contiguous run in row-major order. */
int sov_box_contiguous(int ndim, const int64_t *shape, const int64_t *sub);

/* Checks that a tensor's shards lie inside it and tile it exactly: no gap, no overlap. `where` starts the error. */
sov_status sov_cat_check_tiling(const char *where, const sov_cat_tensor *t);

/* The catalog of manifest `m` (format_version `version`): its buffers, and format 4's tensors and shards, or for
 * formats 1 to 3 one replicated tensor per view in "tensors" and per other buffer. Every entry is checked (names
 * distinct, dtypes known, counts and shapes in range, every shard inside its buffer, shards tiling their tensor);
 * `where` (the manifest's path) starts the errors. */
sov_status sov_catalog_from_manifest(const json_t *m, int version, const char *where, sov_catalog *out);
void sov_catalog_free(sov_catalog *c);
/* The tensor or buffer named `name`, or -1. */
int sov_catalog_find(const sov_catalog *c, const char *name);
int sov_catalog_find_buffer(const sov_catalog *c, const char *name);
/* Records tensor or buffer `index` under its name for the lookups above; SOV_ERR_NOMEM or 0. */
sov_status sov_catalog_index(sov_catalog *c, int tensor, int index);

/* The reader's own view of an open checkpoint, for the module's tools (ckpt_cli.c, safetensors.c). */
const json_t *sov_ckpt_manifest(const sov_ckpt *c);
const sov_catalog *sov_ckpt_catalog(const sov_ckpt *c);

/* Manifest entries, as format 4 writes them. */
json_t *sov_cat_dims_json(int ndim, const int64_t *dims);
json_t *sov_cat_buffer_json(const sov_cat_buffer *b);
json_t *sov_cat_shard_json(const sov_catalog *c, const sov_cat_tensor *t, const sov_cat_shard *s);

#endif
