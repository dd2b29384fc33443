/* ckpt_state_check: a general checkpoint state through the public API, one rank of a real job.
 *
 *   ckpt_state_check save DIR [--small] [--key FILE]   every rank saves its part of the state at step 1
 *   ckpt_state_check load DIR/step-1 [--key FILE]      every rank reads every tensor whole and a box of each, and
 *                                                      checks them
 * --key: encrypted with the key file; the ranks share each save's data key through a sov_comm broadcast.
 * --noise: one replicated tensor of 1 MiB of random bytes instead, which no coding shrinks: every chunk of every
 * rank's file has the same size (for tests that move chunks between files). Its first 16 bytes, in hex, are the
 * meta's "marker", which a save prints (for tests that look for a copy of them in the files).
 *
 * The state is a pure function of the saving job's world size: over 1000 tensors of every dtype and of odd shapes
 * (scalars, empty dimensions, a few large enough for many chunks), a third of them sharded: split by rows over the
 * ranks, or by columns (boxes that are not one run in memory). --small: 6 tensors of f32, i32 and bool (one dtype
 * per transform of the codec), half of them sharded. Element bytes are pseudo-random, NaN patterns included, so
 * that every check is bitwise. A loading job of any world size reads the rows that would be its rank's, without
 * the first and last column, and checks them against the same function. Exits 0 when everything matches; 1
 * naming the first tensor that does not. */
#include <sovtrain/ckpt.h>
#include <sovtrain/comm.h>
#include <sovtrain/sov.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES (64 << 10) /* small chunks: many of them, and tensors that straddle two */

typedef struct spec {
    char name[48];
    sov_dtype dtype;
    int ndim;
    int64_t shape[SOV_CKPT_MAX_DIMS];
    int split; /* -1 replicated; else the dimension its shards split */
} spec;

static uint64_t mix(uint64_t x) { /* splitmix64 */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ x >> 30) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ x >> 27) * 0x94d049bb133111ebull;
    return x ^ x >> 31;
}

/* Byte k of element `flat` of tensor i. */
static uint8_t elem_byte(int i, const spec *s, int64_t flat, size_t k) {
    uint64_t v = mix((uint64_t)i << 40 ^ (uint64_t)flat);
    return s->dtype == SOV_BOOL ? (uint8_t)(v & 1) : (uint8_t)(v >> (8 * k));
}

static int small;            /* --small */
static int noise;            /* --noise */
static sov_ckpt_key *key;    /* --key */
static sov_comm *comm;       /* to share the data key of an encrypted save */

static sov_status share_key(void *ctx, void *bytes, size_t n) {
    (void)ctx;
    return sov_comm_broadcast(comm, bytes, n, SOV_U8, 0);
}

static void make_spec(int i, spec *s) {
    static const sov_dtype dtypes[] = {SOV_F32, SOV_BF16, SOV_F16, SOV_F64, SOV_I64,
                                       SOV_I32, SOV_I16,  SOV_I8,  SOV_U8,  SOV_BOOL};
    static const sov_dtype few[] = {SOV_F32, SOV_I32, SOV_BOOL};
    uint64_t h = mix((uint64_t)i * 7919);
    s->dtype = small ? few[i % 3] : dtypes[i % 10];
    s->ndim = (int)(h % 5);
    for (int d = 0; d < s->ndim; d++)
        s->shape[d] = 1 + (int64_t)(mix(h + (uint64_t)d) % 9);
    if (i % 97 == 13 && s->ndim == 0)
        s->ndim = 2, s->shape[0] = 311, s->shape[1] = 257; /* many chunks */
    if (i % 41 == 5 && s->ndim > 0)
        s->shape[s->ndim - 1] = 0; /* empty */
    s->split = s->ndim == 0 || i % 3 ? -1 : s->ndim > 1 && i % 2 ? 1 : 0;
    if (noise)
        s->dtype = SOV_U8, s->ndim = 1, s->shape[0] = 1 << 20, s->split = -1;
    if (small) {
        s->ndim = s->ndim ? s->ndim : 1;
        s->split = i < 3 ? -1 : 0;
    }
    snprintf(s->name, sizeof s->name, "t%04d.%s%s", i, sov_dtype_name(s->dtype), s->split >= 0 ? ".sharded" : "");
}

static int64_t volume(int ndim, const int64_t *shape) {
    int64_t v = 1;
    for (int d = 0; d < ndim; d++)
        v *= shape[d];
    return v;
}

/* The box [off, off + len) of tensor i, row-major, into dst. */
static void fill_box(int i, const spec *s, const int64_t *off, const int64_t *len, uint8_t *dst) {
    size_t es = sov_dtype_size(s->dtype);
    int64_t n = volume(s->ndim, len), idx[SOV_CKPT_MAX_DIMS] = {0};
    for (int64_t e = 0; e < n; e++) {
        int64_t flat = 0;
        for (int d = 0; d < s->ndim; d++)
            flat = flat * s->shape[d] + off[d] + idx[d];
        for (size_t k = 0; k < es; k++)
            dst[(size_t)e * es + k] = elem_byte(i, s, flat, k);
        for (int d = s->ndim - 1; d >= 0 && ++idx[d] == len[d]; d--)
            idx[d] = 0;
    }
}

/* Rank r's part of dimension `dim` of s over `world` ranks. */
static void part(const spec *s, int dim, int r, int world, int64_t *off, int64_t *len) {
    for (int d = 0; d < s->ndim; d++)
        off[d] = 0, len[d] = s->shape[d];
    off[dim] = s->shape[dim] * r / world;
    len[dim] = s->shape[dim] * (r + 1) / world - off[dim];
}

static int fail(const char *what, const char *name) {
    fprintf(stderr, "ckpt_state_check: %s: %s: %s\n", what, name, sov_last_error());
    return 1;
}

static int save(const char *dir, int count, const sov_world *w) {
    spec *specs = calloc((size_t)count, sizeof *specs);
    sov_ckpt_tensor *t = calloc((size_t)count, sizeof *t);
    for (int i = 0; i < count; i++) {
        spec *s = &specs[i];
        make_spec(i, s);
        int64_t zero[SOV_CKPT_MAX_DIMS] = {0}, off[SOV_CKPT_MAX_DIMS], len[SOV_CKPT_MAX_DIMS];
        t[i] = (sov_ckpt_tensor){.name = s->name, .dtype = s->dtype, .ndim = s->ndim, .sharded = s->split >= 0};
        memcpy(t[i].shape, s->shape, sizeof t[i].shape);
        if (s->split >= 0)
            part(s, s->split, w->rank, w->size, off, len);
        else
            memcpy(len, s->shape, sizeof len);
        memcpy(t[i].shard_offset, s->split >= 0 ? off : zero, sizeof t[i].shard_offset);
        memcpy(t[i].shard_shape, len, sizeof t[i].shard_shape);
        uint8_t *data = malloc((size_t)volume(s->ndim, len) * sov_dtype_size(s->dtype) + 1);
        fill_box(i, s, s->split >= 0 ? off : zero, len, data);
        t[i].data = data;
    }
    char meta[256], marker[33] = "";
    for (int k = 0; k < 16 && specs[0].dtype == SOV_U8 && volume(specs[0].ndim, specs[0].shape) >= 16; k++)
        snprintf(marker + 2 * k, 3, "%02x", ((const uint8_t *)t[0].data)[k]);
    snprintf(meta, sizeof meta, "{\"tensors\": %d, \"saved_by\": %d, \"marker\": \"%s\"}", count, w->size, marker);
    sov_ckpt_state state = {.step = 1, .num_tensors = count, .tensors = t, .meta_json = meta};
    sov_ckpt_options o = {.keep = 1, .threads = 2, .chunk_bytes = CHUNK_BYTES, .commit_timeout_s = 60, .key = key,
                          .share_key = key && w->size > 1 ? share_key : NULL};
    sov_comm_config cc = {.backend = SOV_COMM_AUTO};
    if (o.share_key && sov_comm_init(&comm, w, &cc) != SOV_OK)
        return fail("comm", dir);
    sov_ckpt_writer *wr;
    char path[4200];
    int rc = 0;
    if (sov_ckpt_writer_open(&wr, dir, w->rank, w->size, &o) != SOV_OK)
        return fail("writer", dir);
    if (sov_ckpt_save(wr, &state, 0x5eed0000ull + (uint64_t)count, NULL, NULL) != SOV_OK ||
        sov_ckpt_wait(wr, path, sizeof path) != SOV_OK)
        rc = fail("save", dir);
    else if (w->rank == 0)
        printf("saved %s: %d tensors from %d ranks%s%s\n", path, count, w->size, marker[0] ? "; marker " : "", marker);
    sov_ckpt_writer_close(wr);
    sov_comm_destroy(comm);
    for (int i = 0; i < count; i++)
        free((void *)t[i].data);
    free(t);
    free(specs);
    return rc;
}

/* What a load checks of tensor i: its whole bytes, and the box of this rank's rows less the edge columns. */
typedef struct expect {
    spec s;
    int64_t off[SOV_CKPT_MAX_DIMS], len[SOV_CKPT_MAX_DIMS];
    uint8_t *whole, *box, *got_whole, *got_box;
    size_t whole_bytes, box_bytes;
} expect;

static void plan_expect(int i, int rank, int world, expect *e) {
    make_spec(i, &e->s);
    spec *s = &e->s;
    size_t es = sov_dtype_size(s->dtype);
    int64_t zero[SOV_CKPT_MAX_DIMS] = {0};
    if (s->ndim > 0)
        part(s, 0, rank, world, e->off, e->len);
    for (int d = 1; d < s->ndim; d++)
        if (s->shape[d] > 2)
            e->off[d] = 1, e->len[d] = s->shape[d] - 2;
    e->whole_bytes = (size_t)volume(s->ndim, s->shape) * es;
    e->box_bytes = (size_t)volume(s->ndim, e->len) * es;
    e->whole = malloc(e->whole_bytes + 1), e->got_whole = calloc(e->whole_bytes + 1, 1);
    e->box = malloc(e->box_bytes + 1), e->got_box = calloc(e->box_bytes + 1, 1);
    fill_box(i, s, zero, s->shape, e->whole);
    fill_box(i, s, e->off, e->len, e->box);
}

static int check_info(sov_ckpt *c, const expect *e, int saved_by) {
    sov_ckpt_tensor_info info;
    if (sov_ckpt_tensor_find(c, e->s.name, &info) != SOV_OK)
        return fail("no such tensor", e->s.name);
    int want_shards = e->s.split >= 0 ? saved_by : 1;
    if (info.dtype != e->s.dtype || info.ndim != e->s.ndim || info.num_shards != want_shards ||
        memcmp(info.shape, e->s.shape, (size_t)e->s.ndim * sizeof *info.shape) != 0)
        return fail("dtype, shape or shard count differs", e->s.name);
    return 0;
}

static int load(const char *path, const sov_world *w) {
    sov_ckpt *c;
    if (sov_ckpt_open_key(path, key, &c) != SOV_OK)
        return fail("open", path);
    int count = 0, saved_by = 0, rc = 0;
    const char *meta = sov_ckpt_meta_json(c), *a = strstr(meta, "\"tensors\":"), *b = strstr(meta, "\"saved_by\":");
    if (!a || !b || sscanf(a + 10, "%d", &count) != 1 || sscanf(b + 11, "%d", &saved_by) != 1 ||
        sov_ckpt_num_tensors(c) != count || sov_ckpt_world_size(c) != saved_by)
        return fail("meta or tensor count differs", meta);
    expect *e = calloc((size_t)count, sizeof *e);
    sov_ckpt_read_request *reqs = calloc(2 * (size_t)count, sizeof *reqs);
    for (int i = 0; i < count && rc == 0; i++) {
        plan_expect(i, w->rank, w->size, &e[i]);
        rc = check_info(c, &e[i], saved_by);
        reqs[i] = (sov_ckpt_read_request){.name = e[i].s.name, .dtype = e[i].s.dtype, .dst = e[i].got_whole};
        reqs[count + i] = (sov_ckpt_read_request){.name = e[i].s.name, .dtype = e[i].s.dtype, .offset = e[i].off,
                                                  .shape = e[i].len, .dst = e[i].got_box};
    }
    if (rc == 0 && sov_ckpt_read_many(c, reqs, 2 * count) != SOV_OK) /* all of them in one pass */
        rc = fail("read", path);
    for (int i = 0; i < count && rc == 0; i++) {
        if (memcmp(e[i].whole, e[i].got_whole, e[i].whole_bytes) != 0)
            rc = fail("whole tensor differs", e[i].s.name);
        else if (memcmp(e[i].box, e[i].got_box, e[i].box_bytes) != 0)
            rc = fail("box of the tensor differs", e[i].s.name);
    }
    /* one tensor read alone, the way a single call does it: the same bytes */
    if (rc == 0 && count > 0) {
        memset(e[0].got_box, 0, e[0].box_bytes);
        if (sov_ckpt_read_slice(c, e[0].s.name, e[0].s.dtype, e[0].off, e[0].len, e[0].got_box) != SOV_OK ||
            memcmp(e[0].box, e[0].got_box, e[0].box_bytes) != 0)
            rc = fail("a single slice read differs", e[0].s.name);
    }
    if (rc == 0)
        printf("rank %d of %d: %d tensors saved by %d ranks read whole and by box, bitwise equal\n", w->rank, w->size,
               count, saved_by);
    for (int i = 0; i < count; i++)
        free(e[i].whole), free(e[i].got_whole), free(e[i].box), free(e[i].got_box);
    free(e);
    free(reqs);
    sov_ckpt_close(c);
    return rc;
}

int main(int argc, char **argv) {
    sov_world w;
    if (argc < 3 || sov_world_from_env(&w) != SOV_OK) {
        fprintf(stderr, "usage: ckpt_state_check save DIR [--small] [--key FILE] | load DIR/step-1 [--key FILE] "
                "(%s)\n", sov_last_error());
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0)
            small = 1;
        else if (strcmp(argv[i], "--noise") == 0)
            noise = 1;
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc && sov_ckpt_key_from_file(argv[++i], &key) == SOV_OK)
            continue;
        else
            return fail("bad argument or key", argv[i]);
    }
    int count = noise ? 1 : small ? 6 : 1100, rc = 2;
    if (strcmp(argv[1], "save") == 0)
        rc = save(argv[2], count, &w);
    else if (strcmp(argv[1], "load") == 0)
        rc = load(argv[2], &w);
    else
        fprintf(stderr, "ckpt_state_check: unknown mode \"%s\"\n", argv[1]);
    sov_ckpt_key_free(key);
    return rc;
}
