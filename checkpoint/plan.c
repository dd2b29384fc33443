/* plan.c: see plan.h. */
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static sov_status bad_tensor(int i, const char *name, const char *what) {
    return sov_fail(SOV_ERR_INVALID, "checkpoint: tensor %d (\"%.64s\") %s", i, name ? name : "(null)", what);
}

/* One tensor of the state, checked; *count is its elements on this rank. */
static sov_status check_tensor(const sov_ckpt_tensor *t, int i, size_t *count) {
    json_t *utf8 = t->name ? json_string(t->name) : NULL; /* NULL unless valid UTF-8, as the manifest needs */
    json_decref(utf8);
    if (!t->name || !*t->name || strlen(t->name) > SOV_CKPT_MAX_NAME || !utf8)
        return bad_tensor(i, t->name, "needs a UTF-8 name of 1 to 255 bytes");
    if (sov_dtype_size(t->dtype) == 0)
        return bad_tensor(i, t->name, "has an unknown dtype");
    if (t->ndim < 0 || t->ndim > SOV_CKPT_MAX_DIMS || sov_box_volume(t->ndim, t->shape) < 0)
        return bad_tensor(i, t->name, "has an invalid shape (0 to 8 dimensions of 0 to 2^40 elements in all)");
    const int64_t *mine = t->sharded ? t->shard_shape : t->shape;
    if (t->sharded && (!sov_box_inside(t->ndim, t->shard_offset, t->shard_shape, t->shape) ||
                       sov_box_volume(t->ndim, t->shard_shape) < 0))
        return bad_tensor(i, t->name, "has a shard that does not lie inside its shape");
    *count = (size_t)sov_box_volume(t->ndim, mine);
    if (*count && !t->data)
        return bad_tensor(i, t->name, "has no data");
    return SOV_OK;
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const sov_ckpt_tensor *const *)a)->name, (*(const sov_ckpt_tensor *const *)b)->name);
}

static sov_status check_unique(const sov_ckpt_state *s) {
    const sov_ckpt_tensor **sorted = sov_calloc((size_t)s->num_tensors + 1, sizeof *sorted);
    if (!sorted)
        return SOV_ERR_NOMEM;
    for (int i = 0; i < s->num_tensors; i++)
        sorted[i] = &s->tensors[i];
    qsort(sorted, (size_t)s->num_tensors, sizeof *sorted, by_name);
    sov_status st = SOV_OK;
    for (int i = 1; i < s->num_tensors && st == SOV_OK; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            st = sov_fail(SOV_ERR_INVALID, "checkpoint: two tensors are named \"%.64s\"", sorted[i]->name);
    free(sorted);
    return st;
}

/* The buffer of dtype dt that `writer` writes, made when it is the first; -1 when out of memory. */
static int buffer_for(sov_plan *p, sov_dtype dt, int writer) {
    for (int b = 0; b < p->cat.nbuffers; b++)
        if (p->cat.buffers[b].dtype == dt && p->cat.buffers[b].writer == writer)
            return b;
    char name[64];
    if (writer < 0)
        snprintf(name, sizeof name, "replicated.%s", sov_dtype_name(dt));
    else
        snprintf(name, sizeof name, "rank-%d.%s", writer, sov_dtype_name(dt));
    int b = p->cat.nbuffers;
    if (!(p->cat.buffers[b].name = strdup(name)))
        return -1;
    p->cat.buffers[b].dtype = dt;
    p->cat.buffers[b].writer = writer;
    p->cat.nbuffers++;
    return b;
}

/* Appends tensor t (count elements here) to its buffer and to the catalog. */
static sov_status add_tensor(sov_plan *p, const sov_ckpt_tensor *t, size_t count) {
    int b = buffer_for(p, t->dtype, t->sharded ? p->rank : -1);
    sov_cat_tensor *ct = &p->cat.tensors[p->cat.ntensors++]; /* counted first: sov_plan_free frees what is made */
    if (b < 0 || !(ct->name = strdup(t->name)) || !(ct->shards = sov_calloc(1, sizeof *ct->shards)))
        return sov_fail(SOV_ERR_NOMEM, "checkpoint: out of memory planning tensor \"%.64s\"", t->name);
    if (count > (size_t)SOV_CKPT_MAX_ELEMS - p->cat.buffers[b].count)
        return sov_fail(SOV_ERR_INVALID, "checkpoint: the %s tensors hold more than 2^40 elements in all",
                        sov_dtype_name(t->dtype));
    ct->dtype = t->dtype;
    ct->ndim = t->ndim;
    memcpy(ct->shape, t->shape, (size_t)t->ndim * sizeof *t->shape);
    ct->nshards = 1;
    sov_cat_shard *s = &ct->shards[0];
    *s = (sov_cat_shard){.buffer = b, .at = p->cat.buffers[b].count};
    if (t->sharded)
        memcpy(s->offset, t->shard_offset, (size_t)t->ndim * sizeof *t->shape);
    memcpy(s->shape, t->sharded ? t->shard_shape : t->shape, (size_t)t->ndim * sizeof *t->shape);
    p->cat.buffers[b].count += count;
    struct sov_plan_sources *src = &p->sources[b];
    if (count && src->n == src->cap) {
        int cap = src->cap ? 2 * src->cap : 16;
        sov_plan_source *grown = realloc(src->runs, (size_t)cap * sizeof *grown);
        if (!grown)
            return sov_fail(SOV_ERR_NOMEM, "checkpoint: out of memory planning tensor \"%.64s\"", t->name);
        src->runs = grown;
        src->cap = cap;
    }
    if (count)
        src->runs[src->n++] = (sov_plan_source){.data = t->data, .count = count};
    return SOV_OK;
}

/* Replicated tensors first, so that the split buffers come first; then this rank's shards. */
static sov_status pack(sov_plan *p, const sov_ckpt_state *s, const size_t *counts) {
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->num_tensors; i++)
            if (!s->tensors[i].sharded == !pass)
                SOV_CHECK(add_tensor(p, &s->tensors[i], counts[i]));
        if (pass == 0)
            p->nsplit = p->cat.nbuffers;
    }
    return SOV_OK;
}

/* What every rank must agree on: the replicated tensors' names, dtypes and shapes, in order. */
static uint64_t replicated_digest(const sov_ckpt_state *s) {
    uint64_t h = 0;
    for (int i = 0; i < s->num_tensors; i++) {
        const sov_ckpt_tensor *t = &s->tensors[i];
        if (t->sharded)
            continue;
        int64_t head[2] = {(int64_t)t->dtype, (int64_t)t->ndim};
        h = XXH3_64bits_withSeed(t->name, strlen(t->name) + 1, h);
        h = XXH3_64bits_withSeed(head, sizeof head, h);
        h = XXH3_64bits_withSeed(t->shape, (size_t)t->ndim * sizeof *t->shape, h);
    }
    return h;
}

/* This rank's share: [total*r/N, total*(r+1)/N) of the split buffers end to end, then its own buffers whole. */
static sov_status plan_share(sov_plan *p) {
    size_t total = 0, base = 0;
    for (int b = 0; b < p->nsplit; b++)
        total += p->cat.buffers[b].count;
    size_t lo = (size_t)((unsigned __int128)total * (unsigned)p->rank / (unsigned)p->world);
    size_t hi = (size_t)((unsigned __int128)total * (unsigned)(p->rank + 1) / (unsigned)p->world);
    if (!(p->pieces = sov_calloc((size_t)p->cat.nbuffers + 1, sizeof *p->pieces)))
        return SOV_ERR_NOMEM;
    for (int b = 0; b < p->cat.nbuffers; b++) {
        size_t count = p->cat.buffers[b].count, a = 0, z = count;
        if (b < p->nsplit) {
            a = lo > base ? lo - base : 0;
            z = hi > base ? (hi - base < count ? hi - base : count) : 0;
            base += count;
        }
        if (a < z) {
            size_t at = (p->share_bytes + SOV_PLAN_ALIGN - 1) / SOV_PLAN_ALIGN * SOV_PLAN_ALIGN;
            p->pieces[p->npieces++] = (sov_plan_piece){.buffer = b, .offset = a, .count = z - a, .staging_at = at};
            p->share_bytes = at + (z - a) * sov_dtype_size(p->cat.buffers[b].dtype);
        }
    }
    return SOV_OK;
}

sov_status sov_plan_make(sov_plan *p, const sov_ckpt_state *s, int rank, int world) {
    memset(p, 0, sizeof *p);
    p->rank = rank;
    p->world = world;
    if (s->num_tensors < 0 || (s->num_tensors > 0 && !s->tensors))
        return sov_fail(SOV_ERR_INVALID, "checkpoint: %d tensors and no array of them", s->num_tensors);
    size_t n = (size_t)s->num_tensors;
    size_t *counts = sov_calloc(n + 1, sizeof *counts);
    sov_status st = counts ? SOV_OK : SOV_ERR_NOMEM;
    for (int i = 0; i < s->num_tensors && st == SOV_OK; i++)
        st = check_tensor(&s->tensors[i], i, &counts[i]);
    if (st == SOV_OK)
        st = check_unique(s);
    if (st == SOV_OK) { /* at most one buffer per dtype and writer, so 2 x SOV_NUM_DTYPES */
        p->cat.buffers = sov_calloc(2 * SOV_NUM_DTYPES, sizeof *p->cat.buffers);
        p->sources = sov_calloc(2 * SOV_NUM_DTYPES, sizeof *p->sources);
        p->cat.tensors = sov_calloc(n + 1, sizeof *p->cat.tensors);
        if (!p->cat.buffers || !p->sources || !p->cat.tensors)
            st = SOV_ERR_NOMEM;
    }
    if (st == SOV_OK)
        st = pack(p, s, counts);
    if (st == SOV_OK)
        st = plan_share(p);
    if (st == SOV_OK)
        p->replicated_digest = replicated_digest(s);
    free(counts);
    if (st != SOV_OK)
        sov_plan_free(p);
    return st;
}

void sov_plan_free(sov_plan *p) {
    for (int b = 0; p->sources && b < 2 * SOV_NUM_DTYPES; b++)
        free(p->sources[b].runs);
    free(p->sources);
    free(p->pieces);
    sov_catalog_free(&p->cat);
    memset(p, 0, sizeof *p);
}

sov_status sov_plan_sources_of(const sov_plan *p, int i,
                               sov_status (*add)(void *ctx, const void *src, size_t at, size_t bytes), void *ctx) {
    const sov_plan_piece *pc = &p->pieces[i];
    const struct sov_plan_sources *src = &p->sources[pc->buffer];
    size_t es = sov_dtype_size(p->cat.buffers[pc->buffer].dtype), at = 0, end = pc->offset + pc->count;
    for (int r = 0; r < src->n && at < end; r++) {
        size_t a = pc->offset > at ? pc->offset : at, z = at + src->runs[r].count < end ? at + src->runs[r].count : end;
        if (a < z)
            SOV_CHECK(add(ctx, src->runs[r].data + (a - at) * es, pc->staging_at + (a - pc->offset) * es, (z - a) * es));
        at += src->runs[r].count;
    }
    return SOV_OK;
}

size_t sov_plan_chunk_end(const sov_plan *p, int i, size_t from, size_t chunk_elems) {
    const sov_plan_piece *pc = &p->pieces[i];
    const struct sov_plan_sources *src = &p->sources[pc->buffer];
    size_t end = pc->offset + pc->count, limit = from + chunk_elems < end ? from + chunk_elems : end;
    size_t large = chunk_elems / 4, at = 0;
    for (int r = 0; r < src->n && at < limit; r++) { /* run r holds the buffer's elements [at, next) */
        size_t next = at + src->runs[r].count;
        if (src->runs[r].count >= large) {
            if (at > from && at - from >= large / 2) /* a large tensor starts its own chunk, unless little */
                return at < limit ? at : limit;     /* precedes it: that joins the tensor's first chunk */
            if (next > from && next < limit)
                return next; /* and ends it */
        }
        at = next;
    }
    return limit;
}

/* ---- manifest parts ---- */

json_t *sov_plan_buffers_json(const sov_plan *p, int own) {
    json_t *a = json_array();
    for (int b = own ? p->nsplit : 0; b < (own ? p->cat.nbuffers : p->nsplit); b++)
        json_array_append_new(a, sov_cat_buffer_json(&p->cat.buffers[b]));
    return a;
}

static json_t *tensor_json(const sov_cat_tensor *t) {
    return json_pack("{s:s, s:s, s:o}", "name", t->name, "dtype", sov_dtype_name(t->dtype), "shape",
                     sov_cat_dims_json(t->ndim, t->shape));
}

json_t *sov_plan_replicated_json(const sov_plan *p) {
    json_t *a = json_array();
    for (int i = 0; i < p->cat.ntensors; i++) {
        const sov_cat_tensor *t = &p->cat.tensors[i];
        if (p->cat.buffers[t->shards[0].buffer].writer >= 0)
            continue;
        json_t *e = tensor_json(t);
        json_object_set_new(e, "shards", json_pack("[o]", sov_cat_shard_json(&p->cat, t, &t->shards[0])));
        json_array_append_new(a, e);
    }
    return a;
}

json_t *sov_plan_shards_json(const sov_plan *p) {
    json_t *a = json_array();
    for (int i = 0; i < p->cat.ntensors; i++) {
        const sov_cat_tensor *t = &p->cat.tensors[i];
        if (p->cat.buffers[t->shards[0].buffer].writer >= 0)
            json_array_append_new(a, json_pack("{s:o, s:o}", "tensor", tensor_json(t), "shard",
                                               sov_cat_shard_json(&p->cat, t, &t->shards[0])));
    }
    return a;
}
