/* reader.c: opening, verifying and reading checkpoints, hardened against damaged input: every size, count and
 * offset from a manifest or chunk header is checked before it is used, and nothing is allocated by an unchecked
 * size. */
#include "catalog.h"
#include "chunk_reader.h"
#include "codec.h"
#include "crypto.h"
#include "fsio.h"
#include "keys.h"
#include <sovtrain/ckpt.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_MAX_BYTES ((size_t)64 << 20)

/* The chunks of one buffer, sorted by elem_offset: they tile it (checked when the index is made). */
typedef struct buffer_chunks {
    sov_chunk_ref *refs;
    size_t n;
} buffer_chunks;

struct sov_ckpt {
    char path[4096];
    json_t *manifest;
    char *meta_text; /* meta as JSON text */
    long step;
    int world;
    int version;
    size_t chunk_bytes;
    uint64_t align; /* where chunks start in a data file: multiples of this (1: back to back) */
    sov_catalog cat;
    buffer_chunks *index;     /* per buffer of cat, made at the first read */
    sov_chunk_reader *chunks; /* made at the first read */
    uint64_t chunk_min, chunk_max; /* the sizes a stored chunk may have */
    /* encrypted (format 5): the manifest's encryption entry; with the key, the data key and each file's key */
    const json_t *encryption;
    uint64_t save_id;
    int unlocked;
    sov_key data_key;
    sov_key *file_keys;
    size_t nfile_keys;
};

static sov_status bad(const sov_ckpt *c, const char *what) {
    return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: %s", c->path, what);
}

/* Where the chunk after one that ends at `end` starts in a data file. */
static uint64_t next_start(const sov_ckpt *c, uint64_t end) { return (end + c->align - 1) / c->align * c->align; }

static int by_start(const void *a, const void *b) {
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The chunks of data file entry f lie where the format puts them: sorted by offset, the first at 0 and each
 * next one at the first multiple of c->align at or after the end of the one before, and the file ends where the
 * last one does. Every byte of the file then belongs to a chunk or to the zeros after one, which a read checks. */
static sov_status check_layout(const sov_ckpt *c, json_t *f) {
    json_t *chunks = json_object_get(f, "chunks"), *size = json_object_get(f, "bytes"), *ch;
    size_t n = json_array_size(chunks), i;
    uint64_t(*span)[2] = sov_malloc((n ? n : 1) * sizeof *span);
    if (!span)
        return SOV_ERR_NOMEM;
    json_array_foreach(chunks, i, ch) {
        json_t *fo = json_object_get(ch, "file_offset"), *by = json_object_get(ch, "bytes");
        if (!json_is_integer(fo) || !json_is_integer(by) || json_integer_value(fo) < 0 ||
            (uint64_t)json_integer_value(by) < c->chunk_min || (uint64_t)json_integer_value(by) > c->chunk_max ||
            (c->encryption && i > 0 && (uint64_t)json_integer_value(fo) <= span[i - 1][0])) {
            free(span);
            return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: chunk %zu of %s has no valid place or size%s",
                            c->path, i, json_string_value(json_object_get(f, "file")),
                            c->encryption ? " (an encrypted checkpoint lists its chunks in file order)" : "");
        }
        span[i][0] = (uint64_t)json_integer_value(fo);
        span[i][1] = (uint64_t)json_integer_value(by);
    }
    qsort(span, n, sizeof *span, by_start);
    uint64_t at = 0; /* where the next chunk must start; no overflow: offsets < 2^63, sizes < 2^29 */
    for (i = 0; i < n && span[i][0] == at; i++)
        at = i + 1 < n ? next_start(c, span[i][0] + span[i][1]) : span[i][0] + span[i][1];
    free(span);
    if (i != n || !json_is_integer(size) || (uint64_t)json_integer_value(size) != at)
        return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: the chunks of %s do not lie where the format puts "
                        "them (from byte 0, each at the first multiple of %llu bytes after the one before, the last "
                        "ending at the file's \"bytes\")", c->path, json_string_value(json_object_get(f, "file")),
                        (unsigned long long)c->align);
    return SOV_OK;
}

/* Format 5 is format 4 encrypted: its "encryption" entry names how, and with which key. */
static sov_status validate_encryption(sov_ckpt *c) {
    json_t *e = json_object_get(c->manifest, "encryption"), *meta = json_object_get(e, "meta");
    if (c->version < 5)
        return e ? bad(c, "an \"encryption\" entry in a checkpoint of a format before 5") : SOV_OK;
    const char *cipher = json_string_value(json_object_get(e, "cipher")), *kdf = json_string_value(json_object_get(e, "kdf"));
    const char *id = json_string_value(json_object_get(e, "save_id"));
    char *end = NULL;
    if (id && strlen(id) == 16)
        c->save_id = strtoull(id, &end, 16);
    if (!json_is_object(e) || !cipher || strcmp(cipher, "aes-256-gcm") || !kdf || strcmp(kdf, "hkdf-sha256") ||
        !end || *end || !json_is_string(json_object_get(e, "key_id")) || !json_is_string(json_object_get(e, "wrap")) ||
        !json_is_string(json_object_get(e, "wrapped_key")) || !(json_is_string(meta) || json_is_null(meta)))
        return bad(c, "format 5 needs an \"encryption\" entry with cipher aes-256-gcm, kdf hkdf-sha256, a 16-digit "
                   "save_id, key_id, wrap, wrapped_key and meta");
    c->encryption = e;
    return SOV_OK;
}

/* Checks the manifest's structure: everything later code indexes into. */
static sov_status validate(sov_ckpt *c) {
    json_t *m = c->manifest;
    const char *format = json_string_value(json_object_get(m, "format"));
    json_t *version = json_object_get(m, "format_version");
    if (!format || strcmp(format, "sovtrain-checkpoint") != 0)
        return bad(c, "\"format\" is not \"sovtrain-checkpoint\"");
    if (!json_is_integer(version) || json_integer_value(version) < SOV_CKPT_FORMAT_VERSION_OLDEST ||
        json_integer_value(version) > SOV_CKPT_FORMAT_VERSION)
        return sov_fail(SOV_ERR_UNSUPPORTED, "%s: checkpoint format version %lld; this sovtrain (%s) reads versions "
                        "%d to %d", c->path, json_is_integer(version) ? (long long)json_integer_value(version) : -1LL,
                        sov_version(), SOV_CKPT_FORMAT_VERSION_OLDEST, SOV_CKPT_FORMAT_VERSION);
    json_t *step = json_object_get(m, "step"), *chunk = json_object_get(m, "chunk_bytes");
    if (!json_is_integer(step) || json_integer_value(step) < 0)
        return bad(c, "\"step\" is missing or negative");
    if (!json_is_integer(chunk) || json_integer_value(chunk) < 4 || json_integer_value(chunk) > (256 << 20) ||
        json_integer_value(chunk) % 4)
        return bad(c, "\"chunk_bytes\" is missing, out of range (4 B..256 MiB) or not a multiple of 4");
    c->step = (long)json_integer_value(step);
    c->chunk_bytes = (size_t)json_integer_value(chunk);
    c->version = (int)json_integer_value(version);
    c->align = c->version >= 3 ? SOV_CKPT_CHUNK_ALIGN : 1;
    SOV_CHECK(validate_encryption(c));
    c->chunk_min = SOV_CHUNK_HEADER_BYTES + (c->encryption ? SOV_SEAL_OVERHEAD : 0);
    c->chunk_max = sov_chunk_bound(c->chunk_bytes) + (c->encryption ? SOV_SEAL_OVERHEAD : 0);
    json_t *world = json_object_get(m, "world_size");
    c->world = json_is_integer(world) && json_integer_value(world) > 0 && json_integer_value(world) < (1 << 24)
                   ? (int)json_integer_value(world) : (int)json_array_size(json_object_get(m, "files"));
    const char *base = strrchr(c->path, '/');
    long dir_step;
    base = base ? base + 1 : c->path;
    if (sscanf(base, "step-%ld", &dir_step) == 1 && dir_step != c->step)
        return bad(c, "\"step\" differs from the step in the directory's name");
    return SOV_OK;
}

/* The data files: plain names, chunks that name listed buffers (the catalog's), and the layout of each. */
static sov_status validate_files(sov_ckpt *c) {
    json_t *files = json_object_get(c->manifest, "files"), *f, *ch;
    size_t i, j;
    if (!json_is_array(files) || json_array_size(files) < 1)
        return bad(c, "\"files\" is missing");
    json_array_foreach(files, i, f) {
        const char *name = json_string_value(json_object_get(f, "file"));
        if (!name || strchr(name, '/') || strcmp(name, "..") == 0 || !json_is_array(json_object_get(f, "chunks")))
            return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: file entry %zu lacks a plain file name or its chunk "
                            "list", c->path, i);
        json_array_foreach(json_object_get(f, "chunks"), j, ch) {
            const char *buf = json_string_value(json_object_get(ch, "buffer"));
            if (!buf || sov_catalog_find_buffer(&c->cat, buf) < 0)
                return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: chunk %zu of %s names a buffer the manifest does "
                                "not list", c->path, j, name);
        }
        SOV_CHECK(check_layout(c, f));
    }
    return SOV_OK;
}

/* An encrypted checkpoint with its key: the data key unwrapped, the manifest's text (n bytes) authenticated, the
 * metadata decrypted, and each data file's key derived. */
static sov_status unlock(sov_ckpt *c, const sov_ckpt_key *key, const char *text, size_t n, const char *mpath) {
    SOV_CHECK(sov_key_unwrap(key, c->encryption, &c->data_key, c->path));
    sov_key k;
    sov_status st = sov_derive_key(&c->data_key, c->save_id, "manifest", &k);
    if (st == SOV_OK)
        st = sov_manifest_mac_check(text, n, &k, mpath);
    const char *meta = json_string_value(json_object_get(c->encryption, "meta"));
    if (st == SOV_OK && meta && (st = sov_derive_key(&c->data_key, c->save_id, "meta", &k)) == SOV_OK)
        st = sov_decrypt_text(&k, meta, &c->meta_text, mpath);
    sov_wipe(&k, sizeof k);
    json_t *files = json_object_get(c->manifest, "files");
    size_t nfiles = json_array_size(files);
    if (st == SOV_OK && !(c->file_keys = sov_calloc(nfiles + 1, sizeof *c->file_keys)))
        st = SOV_ERR_NOMEM;
    c->nfile_keys = c->file_keys ? nfiles : 0;
    for (size_t i = 0; i < nfiles && st == SOV_OK; i++) {
        char purpose[300];
        snprintf(purpose, sizeof purpose, "file:%s", json_string_value(json_object_get(json_array_get(files, i), "file")));
        st = sov_derive_key(&c->data_key, c->save_id, purpose, &c->file_keys[i]);
    }
    c->unlocked = st == SOV_OK;
    return st;
}

/* The manifest's meta as text, for sov_ckpt_meta_json. */
static sov_status keep_meta(sov_ckpt *c) {
    if (c->meta_text)
        return SOV_OK; /* decrypted */
    json_t *meta = json_object_get(c->manifest, "meta");
    c->meta_text = meta ? json_dumps(meta, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("null");
    return c->meta_text ? SOV_OK : sov_fail(SOV_ERR_NOMEM, "%s: cannot keep the manifest's meta", c->path);
}

sov_status sov_ckpt_open(const char *path, sov_ckpt **out) { return sov_ckpt_open_key(path, NULL, out); }

sov_status sov_ckpt_open_key(const char *path, const sov_ckpt_key *key, sov_ckpt **out) {
    sov_ckpt *c = sov_calloc(1, sizeof *c);
    if (!c)
        return SOV_ERR_NOMEM;
    snprintf(c->path, sizeof c->path, "%s", path);
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", path);
    char *text = NULL;
    size_t n = 0;
    sov_status st = sov_read_file(mpath, MANIFEST_MAX_BYTES, &text, &n);
    if (st == SOV_OK)
        st = sov_manifest_check(text, n, mpath);
    if (st == SOV_OK) {
        json_error_t err;
        c->manifest = json_loadb(text, n, 0, &err);
        if (!c->manifest || !json_is_object(c->manifest))
            st = sov_fail(SOV_ERR_FORMAT, "%s: not valid JSON (line %d: %s)", mpath, err.line, err.text);
    }
    if (st == SOV_OK)
        st = validate(c);
    if (st == SOV_OK && c->encryption && key)
        st = unlock(c, key, text, n, mpath);
    free(text);
    if (st == SOV_OK)
        st = sov_catalog_from_manifest(c->manifest, c->version, mpath, &c->cat);
    if (st == SOV_OK)
        st = validate_files(c);
    if (st == SOV_OK)
        st = keep_meta(c);
    if (st != SOV_OK) {
        sov_ckpt_close(c);
        return st;
    }
    *out = c;
    return SOV_OK;
}

static void free_index(sov_ckpt *c) {
    for (int b = 0; c->index && b < c->cat.nbuffers; b++)
        free(c->index[b].refs);
    free(c->index);
    c->index = NULL;
}

void sov_ckpt_close(sov_ckpt *c) {
    if (!c)
        return;
    sov_chunk_reader_destroy(c->chunks);
    free_index(c);
    sov_catalog_free(&c->cat);
    free(c->meta_text);
    json_decref(c->manifest);
    if (c->file_keys)
        sov_wipe(c->file_keys, c->nfile_keys * sizeof *c->file_keys);
    free(c->file_keys);
    sov_wipe(&c->data_key, sizeof c->data_key);
    free(c);
}

const char *sov_ckpt_key_id(const sov_ckpt *c) {
    return c->encryption ? json_string_value(json_object_get(c->encryption, "key_id")) : NULL;
}

sov_status sov_ckpt_data_key(const sov_ckpt *c, uint8_t out[32]) {
    if (!c->unlocked)
        return sov_fail(SOV_ERR_INVALID, "%s: %s", c->path, c->encryption ? "opened without its key" : "not encrypted");
    memcpy(out, c->data_key.bytes, SOV_KEY_BYTES);
    return SOV_OK;
}

long sov_ckpt_step(const sov_ckpt *c) { return c->step; }
int sov_ckpt_world_size(const sov_ckpt *c) { return c->world; }
const json_t *sov_ckpt_manifest(const sov_ckpt *c) { return c->manifest; }
const sov_catalog *sov_ckpt_catalog(const sov_ckpt *c) { return &c->cat; }
const char *sov_ckpt_path(const sov_ckpt *c) { return c->path; }
const char *sov_ckpt_meta_json(const sov_ckpt *c) { return c->meta_text; }
int sov_ckpt_num_tensors(const sov_ckpt *c) { return c->cat.ntensors; }

static void info_of(const sov_cat_tensor *t, sov_ckpt_tensor_info *info) {
    *info = (sov_ckpt_tensor_info){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .num_shards = t->nshards};
    memcpy(info->shape, t->shape, sizeof info->shape);
}

sov_status sov_ckpt_tensor_at(const sov_ckpt *c, int index, sov_ckpt_tensor_info *info) {
    if (index < 0 || index >= c->cat.ntensors)
        return sov_fail(SOV_ERR_INVALID, "%s: no tensor %d (it has %d)", c->path, index, c->cat.ntensors);
    info_of(&c->cat.tensors[index], info);
    return SOV_OK;
}

sov_status sov_ckpt_tensor_find(const sov_ckpt *c, const char *name, sov_ckpt_tensor_info *info) {
    int i = sov_catalog_find(&c->cat, name);
    if (i < 0)
        return sov_fail(SOV_ERR_INVALID, "%s has no tensor \"%s\"", c->path, name);
    info_of(&c->cat.tensors[i], info);
    return SOV_OK;
}

static int by_offset(const void *a, const void *b) {
    const sov_chunk_ref *x = a, *y = b;
    return x->elem_offset < y->elem_offset ? -1 : x->elem_offset > y->elem_offset;
}

/* File order: the threads of a restore then read each file front to back, whatever buffers its chunks hold. */
static int by_place(const void *a, const void *b) {
    const sov_chunk_ref *x = a, *y = b;
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

/* One chunk entry of file fi checked and made a ref, for a buffer of elem_bytes. */
static sov_status chunk_ref_of(const sov_ckpt *c, size_t fi, size_t ci, const json_t *f, const json_t *ch,
                               sov_chunk_ref *ref, int *buffer) {
    const char *buf = json_string_value(json_object_get(ch, "buffer"));
    json_t *eo = json_object_get(ch, "elem_offset"), *el = json_object_get(ch, "elems"),
           *fo = json_object_get(ch, "file_offset"), *by = json_object_get(ch, "bytes");
    int b = *buffer = buf ? sov_catalog_find_buffer(&c->cat, buf) : -1;
    size_t elem_bytes = b >= 0 ? sov_dtype_size(c->cat.buffers[b].dtype) : 4;
    if (b < 0 || !json_is_integer(eo) || !json_is_integer(el) || !json_is_integer(fo) || !json_is_integer(by) ||
        json_integer_value(eo) < 0 || json_integer_value(eo) > SOV_CKPT_MAX_ELEMS || json_integer_value(el) < 1 ||
        json_integer_value(fo) < 0 || (uint64_t)json_integer_value(by) < c->chunk_min ||
        (uint64_t)json_integer_value(el) > c->chunk_bytes / elem_bytes ||
        (uint64_t)json_integer_value(by) > c->chunk_max)
        return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: chunk %zu of %s is malformed or oversized", c->path, ci,
                        json_string_value(json_object_get(f, "file")));
    uint64_t end = (uint64_t)json_integer_value(fo) + (uint64_t)json_integer_value(by),
             file_end = (uint64_t)json_integer_value(json_object_get(f, "bytes")); /* check_layout's */
    *ref = (sov_chunk_ref){.file = fi, .elem_offset = (size_t)json_integer_value(eo),
                           .elems = (size_t)json_integer_value(el), .elem_bytes = elem_bytes,
                           .file_offset = (uint64_t)json_integer_value(fo), .bytes = (uint64_t)json_integer_value(by),
                           .pad = end < file_end ? (size_t)(next_start(c, end) - end) : 0, .index = ci,
                           .last = ci + 1 == json_array_size(json_object_get(f, "chunks"))};
    return SOV_OK;
}

/* Each buffer's chunks sorted by elem_offset, checked to tile it exactly once. */
static sov_status index_buffer(sov_ckpt *c, int b, const sov_chunk_ref *all, const int *owner, size_t n) {
    buffer_chunks *bc = &c->index[b];
    size_t count = c->cat.buffers[b].count, next = 0, mine = 0, i;
    for (i = 0; i < n; i++)
        mine += owner[i] == b;
    if (!(bc->refs = sov_calloc(mine + 1, sizeof *bc->refs)))
        return SOV_ERR_NOMEM;
    for (i = 0; i < n; i++)
        if (owner[i] == b)
            bc->refs[bc->n++] = all[i];
    if (bc->n)
        qsort(bc->refs, bc->n, sizeof *bc->refs, by_offset);
    for (i = 0; i < bc->n && bc->refs[i].elem_offset == next && bc->refs[i].elems <= count - next; i++)
        next += bc->refs[i].elems;
    if (i != bc->n || next != count)
        return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: the chunks of buffer \"%s\" do not cover its %zu elements "
                        "exactly once", c->path, c->cat.buffers[b].name, count);
    return SOV_OK;
}

/* The chunk index of every buffer, made at the first read. */
static sov_status build_index(sov_ckpt *c) {
    if (c->index)
        return SOV_OK;
    json_t *files = json_object_get(c->manifest, "files"), *f, *ch;
    size_t fi, ci, total = 0, n = 0;
    json_array_foreach(files, fi, f)
        total += json_array_size(json_object_get(f, "chunks"));
    c->index = sov_calloc((size_t)c->cat.nbuffers + 1, sizeof *c->index);
    sov_chunk_ref *all = sov_calloc(total + 1, sizeof *all);
    int *owner = sov_calloc(total + 1, sizeof *owner);
    sov_status st = c->index && all && owner ? SOV_OK : SOV_ERR_NOMEM;
    json_array_foreach(files, fi, f) {
        json_array_foreach(json_object_get(f, "chunks"), ci, ch) {
            if (st == SOV_OK && (st = chunk_ref_of(c, fi, ci, f, ch, &all[n], &owner[n])) == SOV_OK)
                n++;
        }
    }
    for (int b = 0; b < c->cat.nbuffers && st == SOV_OK; b++)
        st = index_buffer(c, b, all, owner, n);
    free(all);
    free(owner);
    if (st != SOV_OK)
        free_index(c);
    return st;
}

/* ---- reads: what each request needs from which chunk ---- */

/* Everything one read_many call needs: a window on each chunk for each range of a request, and the geometry of
 * the parts that are boxes rather than runs (windows point at them once planning is over and they no longer move). */
typedef struct read_plan {
    struct need {
        int buffer;
        size_t chunk; /* index into c->index[buffer] */
        sov_chunk_window window;
        int box; /* index into boxes, or -1 */
    } *needs;
    size_t nneeds, cap;
    sov_box_scatter *boxes;
    int nboxes, boxes_cap;
} read_plan;

static sov_status plan_grow(read_plan *p) {
    if (p->nneeds < p->cap)
        return SOV_OK;
    size_t cap = p->cap ? 2 * p->cap : 64;
    struct need *grown = realloc(p->needs, cap * sizeof *grown);
    if (!grown)
        return sov_fail(SOV_ERR_NOMEM, "reading a checkpoint: out of memory for %zu chunk windows", cap);
    p->needs = grown;
    p->cap = cap;
    return SOV_OK;
}

/* The buffer's elements [lo, hi) go to dst (a run, or box `box`'s rows): a window on every chunk that holds some
 * of them. */
static sov_status plan_range(const sov_ckpt *c, read_plan *p, int buffer, size_t lo, size_t hi, uint8_t *dst,
                             int box) {
    const buffer_chunks *bc = &c->index[buffer];
    size_t a = 0, z = bc->n; /* the first chunk that ends after lo */
    while (a < z) {
        size_t mid = a + (z - a) / 2;
        if (bc->refs[mid].elem_offset + bc->refs[mid].elems <= lo)
            a = mid + 1;
        else
            z = mid;
    }
    for (size_t k = a; k < bc->n && bc->refs[k].elem_offset < hi; k++) {
        SOV_CHECK(plan_grow(p));
        p->needs[p->nneeds++] =
            (struct need){.buffer = buffer, .chunk = k, .window = {.lo = lo, .hi = hi, .dst = dst}, .box = box};
    }
    return SOV_OK;
}

static int plan_box(read_plan *p, const sov_box_scatter *box) {
    if (p->nboxes == p->boxes_cap) {
        int cap = p->boxes_cap ? 2 * p->boxes_cap : 16;
        sov_box_scatter *grown = realloc(p->boxes, (size_t)cap * sizeof *grown);
        if (!grown)
            return -1;
        p->boxes = grown;
        p->boxes_cap = cap;
    }
    p->boxes[p->nboxes] = *box;
    return p->nboxes++;
}

/* The part (offset `at`, lengths `part`) of a request's box that shard s holds: one run when it is one in both the
 * shard and the destination, else a box scattered row by row as its chunks are decoded. Nothing is staged. */
static sov_status plan_part(const sov_ckpt *c, read_plan *p, const sov_cat_tensor *t, const sov_cat_shard *s,
                            const int64_t *req_off, const int64_t *req_shape, uint8_t *dst, const int64_t *at,
                            const int64_t *part) {
    size_t es = sov_dtype_size(t->dtype);
    sov_box_scatter b = {.ndim = t->ndim, .at = s->at, .elem_bytes = es};
    int64_t last[SOV_CKPT_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) {
        b.in_shard[d] = at[d] - s->offset[d];
        b.in_req[d] = at[d] - req_off[d];
        last[d] = b.in_shard[d] + part[d] - 1;
    }
    int64_t lo = sov_box_flat(t->ndim, s->shape, b.in_shard), hi = sov_box_flat(t->ndim, s->shape, last) + 1;
    if (sov_box_contiguous(t->ndim, s->shape, part) && sov_box_contiguous(t->ndim, req_shape, part))
        return plan_range(c, p, s->buffer, s->at + (size_t)lo, s->at + (size_t)hi,
                          dst + (size_t)sov_box_flat(t->ndim, req_shape, b.in_req) * es, -1);
    memcpy(b.shard_shape, s->shape, sizeof b.shard_shape);
    memcpy(b.req_shape, req_shape, sizeof b.req_shape);
    memcpy(b.part, part, sizeof b.part);
    int box = plan_box(p, &b);
    if (box < 0)
        return sov_fail(SOV_ERR_NOMEM, "%s: out of memory planning the read of tensor \"%s\"", c->path, t->name);
    return plan_range(c, p, s->buffer, s->at + (size_t)lo, s->at + (size_t)hi, dst, box);
}

/* One request: checked against the tensor, then each shard's part of the box. */
static sov_status plan_request(const sov_ckpt *c, read_plan *p, const sov_ckpt_read_request *r) {
    int ti = r->name ? sov_catalog_find(&c->cat, r->name) : -1;
    if (ti < 0)
        return sov_fail(SOV_ERR_INVALID, "%s has no tensor \"%s\"", c->path, r->name ? r->name : "(null)");
    const sov_cat_tensor *t = &c->cat.tensors[ti];
    if (r->dtype != t->dtype)
        return sov_fail(SOV_ERR_INVALID, "%s: tensor \"%s\" holds %s elements, not %s", c->path, t->name,
                        sov_dtype_name(t->dtype), sov_dtype_name(r->dtype));
    int64_t zero[SOV_CKPT_MAX_DIMS] = {0};
    const int64_t *off = r->offset ? r->offset : zero, *shape = r->shape ? r->shape : t->shape;
    if (!r->offset != !r->shape || !sov_box_inside(t->ndim, off, shape, t->shape))
        return sov_fail(SOV_ERR_INVALID, "%s: the box asked of tensor \"%s\" does not lie inside its shape (give both "
                        "offset and shape, or neither)", c->path, t->name);
    if (sov_box_volume(t->ndim, shape) > 0 && !r->dst)
        return sov_fail(SOV_ERR_INVALID, "%s: no memory given to read tensor \"%s\" into", c->path, t->name);
    for (int i = 0; i < t->nshards; i++) {
        int64_t at[SOV_CKPT_MAX_DIMS], part[SOV_CKPT_MAX_DIMS];
        const sov_cat_shard *s = &t->shards[i];
        if (sov_box_intersect(t->ndim, s->offset, s->shape, off, shape, at, part))
            SOV_CHECK(plan_part(c, p, t, s, off, shape, r->dst, at, part));
    }
    return SOV_OK;
}

static int by_chunk(const void *a, const void *b) {
    const struct need *x = a, *y = b;
    if (x->buffer != y->buffer)
        return x->buffer < y->buffer ? -1 : 1;
    return x->chunk < y->chunk ? -1 : x->chunk > y->chunk;
}

/* One ref per chunk needed, carrying the windows of every request that needs it, in file order. */
static sov_status refs_of(const sov_ckpt *c, read_plan *p, sov_chunk_ref **out, size_t *n_out,
                          sov_chunk_window **windows_out) {
    if (p->nneeds)
        qsort(p->needs, p->nneeds, sizeof *p->needs, by_chunk);
    sov_chunk_ref *refs = sov_calloc(p->nneeds + 1, sizeof *refs);
    sov_chunk_window *windows = sov_calloc(p->nneeds + 1, sizeof *windows);
    if (!refs || !windows) {
        free(refs);
        free(windows);
        return SOV_ERR_NOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < p->nneeds; i++) {
        windows[i] = p->needs[i].window;
        windows[i].box = p->needs[i].box >= 0 ? &p->boxes[p->needs[i].box] : NULL;
        int same = i > 0 && by_chunk(&p->needs[i - 1], &p->needs[i]) == 0;
        if (!same) {
            refs[n] = c->index[p->needs[i].buffer].refs[p->needs[i].chunk];
            refs[n].windows = &windows[i];
            n++;
        }
        refs[n - 1].nwindows++;
    }
    if (n)
        qsort(refs, n, sizeof *refs, by_place);
    *out = refs;
    *n_out = n;
    *windows_out = windows;
    return SOV_OK;
}

/* Reads and decodes the chunks in refs (verifying every one), each into its windows. */
static sov_status decode_chunks(sov_ckpt *c, const sov_chunk_ref *refs, size_t n) {
    if (n == 0)
        return SOV_OK;
    if (!c->chunks)
        SOV_CHECK(sov_chunk_reader_create(&c->chunks));
    json_t *files = json_object_get(c->manifest, "files");
    size_t nfiles = json_array_size(files);
    const char **names = malloc((nfiles ? nfiles : 1) * sizeof *names);
    if (!names)
        return sov_fail(SOV_ERR_NOMEM, "reading %s: out of memory", c->path);
    for (size_t i = 0; i < nfiles; i++)
        names[i] = json_string_value(json_object_get(json_array_get(files, i), "file"));
    sov_chunk_keys keys = {.sealed = c->encryption != NULL, .file_keys = c->unlocked ? c->file_keys : NULL};
    sov_status st = sov_chunk_reader_run(c->chunks, c->path, names, refs, n, &keys);
    free(names);
    return st;
}

static void plan_free(read_plan *p) {
    free(p->boxes);
    free(p->needs);
}

sov_status sov_ckpt_read_many(sov_ckpt *c, const sov_ckpt_read_request *requests, int num_requests) {
    if (c->encryption && !c->unlocked)
        return sov_fail(SOV_ERR_INVALID, "%s is encrypted with key id %s: give its key to read it (--ckpt-key-file "
                        "or --ckpt-key-command; sov_ckpt_open_key)", c->path, sov_ckpt_key_id(c));
    SOV_CHECK(build_index(c));
    read_plan p = {0};
    sov_status st = SOV_OK;
    for (int r = 0; r < num_requests && st == SOV_OK; r++)
        st = plan_request(c, &p, &requests[r]);
    sov_chunk_ref *refs = NULL;
    sov_chunk_window *windows = NULL;
    size_t n = 0;
    if (st == SOV_OK)
        st = refs_of(c, &p, &refs, &n, &windows);
    if (st == SOV_OK)
        st = decode_chunks(c, refs, n);
    free(refs);
    free(windows);
    plan_free(&p);
    return st;
}

sov_status sov_ckpt_read(sov_ckpt *c, const char *name, sov_dtype dtype, void *dst) {
    sov_ckpt_read_request r = {.name = name, .dtype = dtype, .dst = dst};
    return sov_ckpt_read_many(c, &r, 1);
}

sov_status sov_ckpt_read_slice(sov_ckpt *c, const char *name, sov_dtype dtype, const int64_t *offset,
                               const int64_t *shape, void *dst) {
    sov_ckpt_read_request r = {.name = name, .dtype = dtype, .offset = offset, .shape = shape, .dst = dst};
    return sov_ckpt_read_many(c, &r, 1);
}

sov_status sov_ckpt_verify(sov_ckpt *c) {
    SOV_CHECK(build_index(c)); /* coverage of every buffer */
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(c->manifest, "files"), i, f) { /* every file exactly as long as listed */
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", c->path, json_string_value(json_object_get(f, "file")));
        struct stat sb;
        json_t *bytes = json_object_get(f, "bytes");
        if (stat(path, &sb) != 0)
            return sov_fail(errno == ENOENT ? SOV_ERR_FORMAT : SOV_ERR_IO, "%s: %s", path, strerror(errno));
        if (!json_is_integer(bytes) || (json_int_t)sb.st_size != json_integer_value(bytes))
            return sov_fail(SOV_ERR_FORMAT, "%s: %lld bytes, the manifest says %lld", path, (long long)sb.st_size,
                            json_is_integer(bytes) ? (long long)json_integer_value(bytes) : -1LL);
    }
    size_t total = 0;
    for (int b = 0; b < c->cat.nbuffers; b++)
        total += c->index[b].n;
    sov_chunk_ref *refs = sov_calloc(total + 1, sizeof *refs);
    if (!refs)
        return SOV_ERR_NOMEM;
    size_t n = 0;
    for (int b = 0; b < c->cat.nbuffers; b++)
        for (size_t k = 0; k < c->index[b].n; k++)
            refs[n++] = c->index[b].refs[k]; /* no windows: decoded and dropped */
    qsort(refs, n, sizeof *refs, by_place);
    sov_status st = decode_chunks(c, refs, n);
    free(refs);
    return st;
}

/* ---- finding checkpoints ---- */

static int by_step_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

int sov_ckpt_list_steps(const char *dir, long *steps, int cap) {
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        char *end;
        if (strncmp(e->d_name, "step-", 5) != 0)
            continue;
        long s = strtol(e->d_name + 5, &end, 10);
        char canonical[64];
        snprintf(canonical, sizeof canonical, "step-%ld", s);
        if (end != e->d_name + 5 && *end == '\0' && s >= 0 && strcmp(canonical, e->d_name) == 0)
            steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, by_step_desc);
    return n;
}

static void note(sov_ckpt_note_fn fn, void *ctx, const char *fmt, const char *a, const char *b) {
    if (!fn)
        return;
    char msg[2048];
    snprintf(msg, sizeof msg, fmt, a, b);
    fn(ctx, msg);
}

sov_status sov_ckpt_find(const char *dir, char *path, size_t cap, sov_ckpt_note_fn fn, void *ctx) {
    char latest[4200], *text = NULL;
    size_t n;
    long steps[4096];
    int count = sov_ckpt_list_steps(dir, steps, 4096);
    char candidates[4097][64];
    int nc = 0;
    snprintf(latest, sizeof latest, "%s/latest", dir);
    if (sov_read_file(latest, 256, &text, &n) == SOV_OK) {
        text[strcspn(text, "\r\n")] = '\0';
        if (strncmp(text, "step-", 5) == 0 && !strchr(text, '/'))
            snprintf(candidates[nc++], 64, "%.63s", text);
        free(text);
    }
    for (int i = 0; i < count; i++) {
        char name[64];
        snprintf(name, sizeof name, "step-%ld", steps[i]);
        if (nc == 0 || strcmp(name, candidates[0]) != 0)
            snprintf(candidates[nc++], 64, "%s", name);
    }
    for (int i = 0; i < nc; i++) {
        snprintf(path, cap, "%s/%s", dir, candidates[i]);
        sov_ckpt *c;
        sov_status st = sov_ckpt_open(path, &c);
        if (st == SOV_OK) {
            st = sov_ckpt_verify(c);
            sov_ckpt_close(c);
        }
        if (st == SOV_OK)
            return SOV_OK;
        note(fn, ctx, "skipping %s: %s", path, sov_last_error());
    }
    return sov_fail(SOV_ERR_IO, nc ? "no checkpoint under %s verifies" : "no checkpoint under %s", dir);
}
