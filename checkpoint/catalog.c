/* catalog.c: see catalog.h. Every number taken from a manifest is checked before it is used. */
#include "catalog.h"

#include <stdlib.h>
#include <string.h>

int64_t sov_box_volume(int ndim, const int64_t *shape) {
    int64_t v = 1;
    int empty = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || shape[d] > SOV_CKPT_MAX_ELEMS)
            return -1;
        if (shape[d] == 0)
            empty = 1;
        else if (!empty && v > SOV_CKPT_MAX_ELEMS / shape[d])
            return -1;
        else if (!empty)
            v *= shape[d];
    }
    return empty ? 0 : v;
}

int sov_box_inside(int ndim, const int64_t *offset, const int64_t *shape, const int64_t *bounds) {
    for (int d = 0; d < ndim; d++)
        if (offset[d] < 0 || shape[d] < 0 || offset[d] > bounds[d] || shape[d] > bounds[d] - offset[d])
            return 0;
    return 1;
}

int sov_box_intersect(int ndim, const int64_t *a_off, const int64_t *a_shape, const int64_t *b_off,
                      const int64_t *b_shape, int64_t *offset, int64_t *shape) {
    int nonempty = 1;
    for (int d = 0; d < ndim; d++) {
        int64_t lo = a_off[d] > b_off[d] ? a_off[d] : b_off[d];
        int64_t a_end = a_off[d] + a_shape[d], b_end = b_off[d] + b_shape[d];
        int64_t hi = a_end < b_end ? a_end : b_end;
        offset[d] = lo;
        shape[d] = hi > lo ? hi - lo : 0;
        nonempty = nonempty && hi > lo;
    }
    return nonempty;
}

int64_t sov_box_flat(int ndim, const int64_t *shape, const int64_t *index) {
    int64_t flat = 0;
    for (int d = 0; d < ndim; d++)
        flat = flat * shape[d] + index[d];
    return flat;
}

/* Row-major: a sub-box is one run when, after its first dimension of length > 1, it spans every later dimension
 * whole. */
int sov_box_contiguous(int ndim, const int64_t *shape, const int64_t *sub) {
    int d = 0;
    while (d < ndim && sub[d] == 1)
        d++;
    for (d = d + 1; d < ndim; d++)
        if (sub[d] != shape[d])
            return 0;
    return 1;
}

static int by_first_offset(const void *a, const void *b) {
    const sov_cat_shard *x = *(const sov_cat_shard *const *)a, *y = *(const sov_cat_shard *const *)b;
    return x->offset[0] < y->offset[0] ? -1 : x->offset[0] > y->offset[0];
}

/* Two of the shards overlap. Sorted by their first offset, a shard can only meet those after it that start
 * before it ends in the first dimension: a tensor split by rows is checked in n log n, not n^2. */
static int any_overlap(const sov_cat_tensor *t, const sov_cat_shard **sorted) {
    int64_t o[SOV_CKPT_MAX_DIMS], l[SOV_CKPT_MAX_DIMS];
    if (t->ndim == 0)
        return t->nshards > 1;
    qsort(sorted, (size_t)t->nshards, sizeof *sorted, by_first_offset);
    for (int i = 0; i < t->nshards; i++)
        for (int j = i + 1; j < t->nshards && sorted[j]->offset[0] < sorted[i]->offset[0] + sorted[i]->shape[0]; j++)
            if (sov_box_intersect(t->ndim, sorted[i]->offset, sorted[i]->shape, sorted[j]->offset, sorted[j]->shape,
                                  o, l))
                return 1;
    return 0;
}

sov_status sov_cat_check_tiling(const char *where, const sov_cat_tensor *t) {
    int64_t total = sov_box_volume(t->ndim, t->shape), covered = 0;
    for (int i = 0; i < t->nshards; i++) {
        const sov_cat_shard *s = &t->shards[i];
        if (!sov_box_inside(t->ndim, s->offset, s->shape, t->shape))
            return sov_fail(SOV_ERR_FORMAT, "%s: shard %d of tensor \"%s\" lies outside its shape", where, i, t->name);
        covered += sov_box_volume(t->ndim, s->shape);
    }
    if (covered != total)
        return sov_fail(SOV_ERR_FORMAT, "%s: the shards of tensor \"%s\" hold %lld elements, the tensor %lld: they "
                        "must tile it exactly", where, t->name, (long long)covered, (long long)total);
    const sov_cat_shard **sorted = sov_calloc((size_t)t->nshards + 1, sizeof *sorted);
    if (!sorted)
        return SOV_ERR_NOMEM;
    for (int i = 0; i < t->nshards; i++)
        sorted[i] = &t->shards[i];
    int overlap = any_overlap(t, sorted);
    free(sorted);
    return overlap ? sov_fail(SOV_ERR_FORMAT, "%s: two shards of tensor \"%s\" overlap: they must tile it exactly",
                              where, t->name)
                   : SOV_OK;
}

/* ---- from a manifest ---- */

static int lookup(const json_t *index, const char *name) {
    const json_t *i = index ? json_object_get(index, name) : NULL;
    return i ? (int)json_integer_value(i) : -1;
}

int sov_catalog_find(const sov_catalog *c, const char *name) { return lookup(c->tensor_index, name); }
int sov_catalog_find_buffer(const sov_catalog *c, const char *name) { return lookup(c->buffer_index, name); }

sov_status sov_catalog_index(sov_catalog *c, int tensor, int index) {
    json_t **idx = tensor ? &c->tensor_index : &c->buffer_index;
    const char *name = tensor ? c->tensors[index].name : c->buffers[index].name;
    if (!*idx)
        *idx = json_object();
    if (!*idx || json_object_set_new(*idx, name, json_integer(index)) != 0)
        return sov_fail(SOV_ERR_NOMEM, "checkpoint catalog: cannot index \"%.64s\"", name);
    return SOV_OK;
}

void sov_catalog_free(sov_catalog *c) {
    for (int i = 0; i < c->nbuffers; i++)
        free(c->buffers[i].name);
    for (int i = 0; i < c->ntensors; i++) {
        free(c->tensors[i].name);
        free(c->tensors[i].shards);
    }
    free(c->buffers);
    free(c->tensors);
    json_decref(c->tensor_index);
    json_decref(c->buffer_index);
    memset(c, 0, sizeof *c);
}

static sov_status bad(const char *where, const char *what, const char *name) {
    return sov_fail(SOV_ERR_FORMAT, "%s: %s%s%s%s", where, what, name ? " \"" : "", name ? name : "",
                    name ? "\"" : "");
}

/* A JSON array of `ndim` integers >= 0 into out. */
static int dims_of(const json_t *a, int ndim, int64_t *out) {
    if (!json_is_array(a) || json_array_size(a) != (size_t)ndim)
        return 0;
    for (int d = 0; d < ndim; d++) {
        const json_t *v = json_array_get(a, (size_t)d);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > SOV_CKPT_MAX_ELEMS)
            return 0;
        out[d] = (int64_t)json_integer_value(v);
    }
    return 1;
}

/* One entry of "buffers", checked: a distinct name, a dtype (f32 or bf16 before format 4), a count, a writer. */
static sov_status buffer_from(sov_catalog *c, const json_t *b, int version, const char *where) {
    const char *name = json_string_value(json_object_get(b, "name")),
               *dtype = json_string_value(json_object_get(b, "dtype"));
    const json_t *count = json_object_get(b, "count"), *writer = json_object_get(b, "writer");
    sov_cat_buffer *cb = &c->buffers[c->nbuffers];
    if (!name || !dtype || sov_dtype_parse(dtype, &cb->dtype) != SOV_OK || !json_is_integer(count) ||
        json_integer_value(count) < 0 || json_integer_value(count) > SOV_CKPT_MAX_ELEMS ||
        (version < 4 && cb->dtype != SOV_F32 && cb->dtype != SOV_BF16) ||
        (writer && (!json_is_integer(writer) || json_integer_value(writer) < -1 ||
                    json_integer_value(writer) >= (1 << 24))))
        return bad(where, "a buffer entry lacks a name, a dtype (f32 or bf16 before format 4), a count (0 to 2^40) "
                          "or a valid writer:", name ? name : "(unnamed)");
    if (sov_catalog_find_buffer(c, name) >= 0)
        return bad(where, "two buffers have the same name:", name);
    if (!(cb->name = strdup(name)))
        return sov_fail(SOV_ERR_NOMEM, "%s: out of memory", where);
    cb->count = (size_t)json_integer_value(count);
    cb->writer = writer ? (int)json_integer_value(writer) : -1;
    return sov_catalog_index(c, 0, c->nbuffers++);
}

static sov_status buffers_from(const json_t *m, int version, const char *where, sov_catalog *c) {
    const json_t *bufs = json_object_get(m, "buffers"), *b;
    size_t i;
    if (!json_is_array(bufs))
        return bad(where, "\"buffers\" is missing", NULL);
    if (!(c->buffers = sov_calloc(json_array_size(bufs) + 1, sizeof *c->buffers)))
        return SOV_ERR_NOMEM;
    json_array_foreach(bufs, i, b)
        SOV_CHECK(buffer_from(c, b, version, where));
    return SOV_OK;
}

/* The shard's buffer holds its elements: same dtype, and [at, at + volume) inside it. */
static sov_status check_shard_place(const sov_catalog *c, const sov_cat_tensor *t, const sov_cat_shard *s,
                                    const char *where) {
    const sov_cat_buffer *b = &c->buffers[s->buffer];
    int64_t n = sov_box_volume(t->ndim, s->shape);
    if (b->dtype != t->dtype)
        return bad(where, "a shard lies in a buffer of another dtype: tensor", t->name);
    if (n < 0 || s->at > b->count || (size_t)n > b->count - s->at)
        return bad(where, "a shard lies beyond the end of its buffer: tensor", t->name);
    return SOV_OK;
}

static sov_status shard_from(const sov_catalog *c, const sov_cat_tensor *t, const json_t *j, const char *where,
                             sov_cat_shard *s) {
    const char *buf = json_string_value(json_object_get(j, "buffer"));
    const json_t *at = json_object_get(j, "at");
    s->buffer = buf ? sov_catalog_find_buffer(c, buf) : -1;
    if (s->buffer < 0 || !json_is_integer(at) || json_integer_value(at) < 0 ||
        json_integer_value(at) > SOV_CKPT_MAX_ELEMS || !dims_of(json_object_get(j, "offset"), t->ndim, s->offset) ||
        !dims_of(json_object_get(j, "shape"), t->ndim, s->shape))
        return bad(where, "a shard lacks a listed buffer, a valid \"at\", offset or shape: tensor", t->name);
    s->at = (size_t)json_integer_value(at);
    return check_shard_place(c, t, s, where);
}

static sov_status tensor_from(sov_catalog *c, const json_t *j, const char *where, sov_cat_tensor *t) {
    const char *name = json_string_value(json_object_get(j, "name")),
               *dtype = json_string_value(json_object_get(j, "dtype"));
    const json_t *shape = json_object_get(j, "shape"), *shards = json_object_get(j, "shards");
    if (!name || !*name || strlen(name) > SOV_CKPT_MAX_NAME)
        return bad(where, "a tensor lacks a name of 1 to 255 bytes", NULL);
    if (!dtype || sov_dtype_parse(dtype, &t->dtype) != SOV_OK || !json_is_array(shape) ||
        json_array_size(shape) > SOV_CKPT_MAX_DIMS)
        return bad(where, "a tensor lacks a known dtype or a shape of at most 8 dimensions:", name);
    t->ndim = (int)json_array_size(shape);
    if (!dims_of(shape, t->ndim, t->shape) || sov_box_volume(t->ndim, t->shape) < 0)
        return bad(where, "a tensor's shape is invalid or too large:", name);
    if (!json_is_array(shards) || json_array_size(shards) < 1 || json_array_size(shards) > SOV_CKPT_MAX_SHARDS)
        return bad(where, "a tensor lacks its list of shards (1 to 16384):", name);
    if (sov_catalog_find(c, name) >= 0)
        return bad(where, "two tensors have the same name:", name);
    if (!(t->name = strdup(name)) || !(t->shards = sov_calloc(json_array_size(shards), sizeof *t->shards)))
        return sov_fail(SOV_ERR_NOMEM, "%s: out of memory for tensor \"%.64s\"", where, name);
    SOV_CHECK(sov_catalog_index(c, 1, (int)(t - c->tensors)));
    size_t i;
    const json_t *s;
    json_array_foreach(shards, i, s) {
        SOV_CHECK(shard_from(c, t, s, where, &t->shards[i]));
        t->nshards++;
    }
    return sov_cat_check_tiling(where, t);
}

/* Format 4: "tensors" with their shards. */
static sov_status tensors_v4(const json_t *m, const char *where, sov_catalog *c) {
    const json_t *tensors = json_object_get(m, "tensors"), *t;
    size_t i;
    if (!json_is_array(tensors))
        return bad(where, "\"tensors\" is missing", NULL);
    c->tensors = sov_calloc(json_array_size(tensors) + 1, sizeof *c->tensors);
    if (!c->tensors)
        return SOV_ERR_NOMEM;
    json_array_foreach(tensors, i, t) {
        sov_status st = tensor_from(c, t, where, &c->tensors[c->ntensors]);
        c->ntensors++; /* counted even when it failed part-way, so that sov_catalog_free frees it */
        SOV_CHECK(st);
    }
    return SOV_OK;
}

/* A replicated tensor of a format 1-3 checkpoint: `count` elements of buffer b from `at`, in `shape`. */
static sov_status add_old_tensor(sov_catalog *c, const char *name, int b, size_t at, int ndim, const int64_t *shape,
                                 const char *where) {
    if (sov_catalog_find(c, name) >= 0)
        return bad(where, "two tensors have the same name:", name);
    sov_cat_tensor *t = &c->tensors[c->ntensors++];
    t->dtype = c->buffers[b].dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    if (!(t->name = strdup(name)) || !(t->shards = sov_calloc(1, sizeof *t->shards)))
        return sov_fail(SOV_ERR_NOMEM, "%s: out of memory for tensor \"%.64s\"", where, name);
    SOV_CHECK(sov_catalog_index(c, 1, c->ntensors - 1));
    t->nshards = 1;
    t->shards[0] = (sov_cat_shard){.buffer = b, .at = at};
    memcpy(t->shards[0].shape, shape, (size_t)ndim * sizeof *shape);
    return check_shard_place(c, t, &t->shards[0], where);
}

/* Formats 1-3: each entry of "tensors" (a view of the first buffer, the parameters) is a tensor, and so is every
 * other buffer, whole and one-dimensional (the optimizer's state: "adamw.m"). */
static sov_status tensors_old(const json_t *m, const char *where, sov_catalog *c) {
    const json_t *views = json_object_get(m, "tensors"), *v;
    size_t nviews = json_is_array(views) ? json_array_size(views) : 0, i;
    c->tensors = sov_calloc(nviews + (size_t)c->nbuffers + 1, sizeof *c->tensors);
    if (!c->tensors)
        return SOV_ERR_NOMEM;
    for (i = 0; i < nviews; i++) {
        v = json_array_get(views, i);
        const char *name = json_string_value(json_object_get(v, "name"));
        const json_t *shape = json_object_get(v, "shape"), *off = json_object_get(v, "offset");
        int64_t dims[SOV_CKPT_MAX_DIMS];
        int ndim = json_is_array(shape) ? (int)json_array_size(shape) : -1;
        if (!name || !*name || ndim < 0 || ndim > SOV_CKPT_MAX_DIMS || !dims_of(shape, ndim, dims) ||
            !json_is_integer(off) || json_integer_value(off) < 0 || json_integer_value(off) > SOV_CKPT_MAX_ELEMS ||
            c->nbuffers < 1)
            return bad(where, "an entry of \"tensors\" lacks a name, a shape or an offset", NULL);
        SOV_CHECK(add_old_tensor(c, name, 0, (size_t)json_integer_value(off), ndim, dims, where));
    }
    for (int b = nviews ? 1 : 0; b < c->nbuffers; b++) {
        int64_t count = (int64_t)c->buffers[b].count;
        SOV_CHECK(add_old_tensor(c, c->buffers[b].name, b, 0, 1, &count, where));
    }
    return SOV_OK;
}

sov_status sov_catalog_from_manifest(const json_t *m, int version, const char *where, sov_catalog *out) {
    memset(out, 0, sizeof *out);
    sov_status st = buffers_from(m, version, where, out);
    if (st == SOV_OK)
        st = version >= 4 ? tensors_v4(m, where, out) : tensors_old(m, where, out);
    if (st != SOV_OK)
        sov_catalog_free(out);
    return st;
}

/* ---- to a manifest ---- */

json_t *sov_cat_dims_json(int ndim, const int64_t *dims) {
    json_t *a = json_array();
    for (int d = 0; d < ndim; d++)
        json_array_append_new(a, json_integer((json_int_t)dims[d]));
    return a;
}

json_t *sov_cat_buffer_json(const sov_cat_buffer *b) {
    return json_pack("{s:s, s:s, s:I, s:i}", "name", b->name, "dtype", sov_dtype_name(b->dtype), "count",
                     (json_int_t)b->count, "writer", b->writer);
}

json_t *sov_cat_shard_json(const sov_catalog *c, const sov_cat_tensor *t, const sov_cat_shard *s) {
    return json_pack("{s:s, s:I, s:o, s:o}", "buffer", c->buffers[s->buffer].name, "at", (json_int_t)s->at, "offset",
                     sov_cat_dims_json(t->ndim, s->offset), "shape", sov_cat_dims_json(t->ndim, s->shape));
}
