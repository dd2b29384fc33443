/* reader.c: opening, verifying and reading checkpoints, hardened against damaged input: every size, count and
 * offset from a manifest or chunk header is checked before it is used, and nothing is allocated by an unchecked
 * size. */
#include "chunk_reader.h"
#include <sovtrain/ckpt.h>
#include "codec.h"
#include "fsio.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_MAX_BYTES ((size_t)64 << 20)

struct sov_ckpt {
    char path[4096];
    json_t *manifest;
    long step;
    size_t chunk_bytes;
    uint64_t align; /* where chunks start in a data file: multiples of this (1: back to back) */
    sov_chunk_reader *chunks; /* made at the first read */
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

/* The chunks of data file fi (entry f) lie where the format puts them: sorted by offset, the first at 0 and each
 * next one at the first multiple of c->align at or after the end of the one before, and the file ends where the
 * last one does. Every byte of the file then belongs to a chunk or to the zeros after one, which a read checks. */
static sov_status check_layout(const sov_ckpt *c, size_t fi, json_t *f) {
    json_t *chunks = json_object_get(f, "chunks"), *size = json_object_get(f, "bytes"), *ch;
    size_t n = json_array_size(chunks), i;
    uint64_t(*span)[2] = sov_malloc((n ? n : 1) * sizeof *span);
    if (!span)
        return SOV_ERR_NOMEM;
    json_array_foreach(chunks, i, ch) {
        json_t *fo = json_object_get(ch, "file_offset"), *by = json_object_get(ch, "bytes");
        if (!json_is_integer(fo) || !json_is_integer(by) || json_integer_value(fo) < 0 ||
            json_integer_value(by) < SOV_CHUNK_HEADER_BYTES ||
            (uint64_t)json_integer_value(by) > sov_chunk_bound(c->chunk_bytes)) {
            free(span);
            return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: chunk %zu of file %zu has no valid place or size",
                            c->path, i, fi);
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
        return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: the chunks of file %zu do not lie where the format puts "
                        "them (from byte 0, each at the first multiple of %llu bytes after the one before, the last "
                        "ending at the file's \"bytes\")", c->path, fi, (unsigned long long)c->align);
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
    c->align = json_integer_value(version) >= 3 ? SOV_CKPT_CHUNK_ALIGN : 1;
    json_t *buffers = json_object_get(m, "buffers"), *files = json_object_get(m, "files");
    if (!json_is_array(buffers) || !json_is_array(files) || json_array_size(files) < 1)
        return bad(c, "\"buffers\" or \"files\" is missing");
    size_t i, j;
    json_t *b, *f, *ch;
    json_array_foreach(buffers, i, b) {
        json_t *cnt = json_object_get(b, "count");
        const char *dtype = json_string_value(json_object_get(b, "dtype")), *name = json_string_value(json_object_get(b, "name"));
        if (!name || !json_is_integer(cnt) || json_integer_value(cnt) < 0 ||
            json_integer_value(cnt) > ((json_int_t)1 << 40) || !dtype ||
            (strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0))
            return bad(c, "a buffer entry lacks a name, a valid count or a dtype (f32 or bf16)");
        for (j = 0; j < i; j++)
            if (strcmp(json_string_value(json_object_get(json_array_get(buffers, j), "name")), name) == 0)
                return bad(c, "two buffers have the same name");
    }
    json_array_foreach(files, i, f) {
        const char *name = json_string_value(json_object_get(f, "file"));
        if (!name || strchr(name, '/') || strcmp(name, "..") == 0 || !json_is_array(json_object_get(f, "chunks")))
            return bad(c, "a file entry lacks a plain file name or its chunk list");
        json_array_foreach(json_object_get(f, "chunks"), j, ch) {
            const char *buf = json_string_value(json_object_get(ch, "buffer"));
            if (!buf || sov_ckpt_buffer_count(c, buf) == 0)
                return bad(c, "a chunk names a buffer the manifest does not list");
        }
        SOV_CHECK(check_layout(c, i, f));
    }
    const char *base = strrchr(c->path, '/');
    long dir_step;
    base = base ? base + 1 : c->path;
    if (sscanf(base, "step-%ld", &dir_step) == 1 && dir_step != c->step)
        return bad(c, "\"step\" differs from the step in the directory's name");
    return SOV_OK;
}

sov_status sov_ckpt_open(const char *path, sov_ckpt **out) {
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
    free(text);
    if (st == SOV_OK)
        st = validate(c);
    if (st != SOV_OK) {
        sov_ckpt_close(c);
        return st;
    }
    *out = c;
    return SOV_OK;
}

void sov_ckpt_close(sov_ckpt *c) {
    if (!c)
        return;
    sov_chunk_reader_destroy(c->chunks);
    json_decref(c->manifest);
    free(c);
}

long sov_ckpt_step(const sov_ckpt *c) { return c->step; }
const json_t *sov_ckpt_manifest(const sov_ckpt *c) { return c->manifest; }
const char *sov_ckpt_path(const sov_ckpt *c) { return c->path; }

static json_t *buffer_entry(const sov_ckpt *c, const char *name) {
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(c->manifest, "buffers"), i, b) {
        if (strcmp(json_string_value(json_object_get(b, "name")), name) == 0)
            return b;
    }
    return NULL;
}

size_t sov_ckpt_buffer_count(const sov_ckpt *c, const char *name) {
    json_t *b = buffer_entry(c, name);
    return b ? (size_t)json_integer_value(json_object_get(b, "count")) : 0;
}

/* validate() allows f32 and bf16 only. */
size_t sov_ckpt_buffer_elem_bytes(const sov_ckpt *c, const char *name) {
    json_t *b = buffer_entry(c, name);
    return b && strcmp(json_string_value(json_object_get(b, "dtype")), "bf16") == 0 ? 2 : 4;
}

size_t sov_ckpt_dtype_bytes(sov_ckpt_dtype dtype) { return dtype == SOV_CKPT_BF16 ? 2 : 4; }
const char *sov_ckpt_dtype_name(sov_ckpt_dtype dtype) { return dtype == SOV_CKPT_BF16 ? "bf16" : "f32"; }

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

/* The chunks of buffer `name` (all when name is NULL), checked: within the buffer, sizes plausible. */
static sov_status collect_chunks(const sov_ckpt *c, const char *name, size_t count, sov_chunk_ref **out, size_t *n_out) {
    json_t *files = json_object_get(c->manifest, "files"), *f, *ch;
    size_t fi, ci, n = 0, cap = 0;
    sov_chunk_ref *refs = NULL;
    json_array_foreach(files, fi, f) {
        json_array_foreach(json_object_get(f, "chunks"), ci, ch) {
            const char *buf = json_string_value(json_object_get(ch, "buffer"));
            json_t *eo = json_object_get(ch, "elem_offset"), *el = json_object_get(ch, "elems"),
                   *fo = json_object_get(ch, "file_offset"), *by = json_object_get(ch, "bytes");
            size_t elem_bytes = buf ? sov_ckpt_buffer_elem_bytes(c, buf) : 4;
            if (!buf || !json_is_integer(eo) || !json_is_integer(el) || !json_is_integer(fo) || !json_is_integer(by) ||
                json_integer_value(eo) < 0 || json_integer_value(el) < 1 || json_integer_value(fo) < 0 ||
                json_integer_value(by) < SOV_CHUNK_HEADER_BYTES ||
                (uint64_t)json_integer_value(el) > c->chunk_bytes / elem_bytes ||
                (uint64_t)json_integer_value(by) > sov_chunk_bound(c->chunk_bytes)) {
                free(refs);
                return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: chunk %zu of file %zu is malformed or oversized",
                                c->path, ci, fi);
            }
            if (name && strcmp(buf, name) != 0)
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                sov_chunk_ref *grown = realloc(refs, cap * sizeof *refs);
                if (!grown) {
                    free(refs);
                    return sov_fail(SOV_ERR_NOMEM, "reading %s: out of memory", c->path);
                }
                refs = grown;
            }
            uint64_t end = (uint64_t)json_integer_value(fo) + (uint64_t)json_integer_value(by),
                     file_end = (uint64_t)json_integer_value(json_object_get(f, "bytes")); /* check_layout's */
            refs[n++] = (sov_chunk_ref){.file = fi, .elem_offset = (size_t)json_integer_value(eo),
                                    .elems = (size_t)json_integer_value(el), .elem_bytes = elem_bytes, .file_offset = (uint64_t)json_integer_value(fo),
                                    .bytes = (uint64_t)json_integer_value(by),
                                    .pad = end < file_end ? (size_t)(next_start(c, end) - end) : 0};
        }
    }
    if (name) { /* the chunks must tile [0, count) exactly: each starts where the previous one ended */
        if (n)
            qsort(refs, n, sizeof *refs, by_offset);
        size_t next = 0, i = 0;
        for (; i < n && refs[i].elem_offset == next && refs[i].elems <= count - next; i++)
            next += refs[i].elems;
        if (i != n || next != count) {
            free(refs);
            return sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: the chunks of buffer \"%s\" do not cover its %zu "
                            "elements exactly once", c->path, name, count);
        }
    }
    *out = refs;
    *n_out = n;
    return SOV_OK;
}

/* Reads and decodes the chunks in refs, each into its dst + elem_offset (no dst: verified and dropped). */
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
    sov_status st = sov_chunk_reader_run(c->chunks, c->path, names, refs, n);
    free(names);
    return st;
}

/* The chunks of one buffer the caller asked for, checked against its count and dtype, appended to *all. */
static sov_status add_buffer_chunks(sov_ckpt *c, const sov_ckpt_buffer *b, sov_chunk_ref **all, size_t *n_all) {
    if (b->count && !b->data)
        return sov_fail(SOV_ERR_INVALID, "%s: no memory given to read buffer \"%s\" into", c->path, b->name);
    size_t have = sov_ckpt_buffer_count(c, b->name);
    if (have != b->count)
        return sov_fail(SOV_ERR_INVALID, "%s: buffer \"%s\" has %zu elements, %zu expected (a different model or "
                        "optimizer?)", c->path, b->name, have, b->count);
    if (sov_ckpt_buffer_elem_bytes(c, b->name) != sov_ckpt_dtype_bytes(b->dtype))
        return sov_fail(SOV_ERR_INVALID, "%s: buffer \"%s\" holds %s elements, %s expected", c->path, b->name,
                        json_string_value(json_object_get(buffer_entry(c, b->name), "dtype")),
                        sov_ckpt_dtype_name(b->dtype));
    sov_chunk_ref *refs;
    size_t n;
    SOV_CHECK(collect_chunks(c, b->name, b->count, &refs, &n));
    sov_chunk_ref *grown = realloc(*all, (*n_all + n + 1) * sizeof *grown);
    if (!grown) {
        free(refs);
        return sov_fail(SOV_ERR_NOMEM, "reading %s: out of memory", c->path);
    }
    for (size_t i = 0; i < n; i++) {
        grown[*n_all + i] = refs[i];
        grown[*n_all + i].dst = b->data;
    }
    *all = grown;
    *n_all += n;
    free(refs);
    return SOV_OK;
}

sov_status sov_ckpt_read_buffers(sov_ckpt *c, const sov_ckpt_buffer *buffers, int num_buffers) {
    sov_chunk_ref *refs = NULL;
    size_t n = 0;
    sov_status st = SOV_OK;
    for (int b = 0; b < num_buffers && st == SOV_OK; b++)
        st = add_buffer_chunks(c, &buffers[b], &refs, &n);
    if (st == SOV_OK && n)
        qsort(refs, n, sizeof *refs, by_place);
    if (st == SOV_OK)
        st = decode_chunks(c, refs, n);
    free(refs);
    return st;
}

sov_status sov_ckpt_read_buffer(sov_ckpt *c, const char *name, sov_ckpt_dtype dtype, void *dst, size_t count) {
    sov_ckpt_buffer b = {.name = name, .data = dst, .count = count, .dtype = dtype};
    return sov_ckpt_read_buffers(c, &b, 1);
}

sov_status sov_ckpt_verify(sov_ckpt *c) {
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(c->manifest, "buffers"), i, b) { /* coverage of every buffer */
        const char *name = json_string_value(json_object_get(b, "name"));
        sov_chunk_ref *refs;
        size_t n;
        SOV_CHECK(collect_chunks(c, name, (size_t)json_integer_value(json_object_get(b, "count")), &refs, &n));
        free(refs);
    }
    json_t *f;
    json_array_foreach(json_object_get(c->manifest, "files"), i, f) { /* every file exactly as long as listed */
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", c->path, json_string_value(json_object_get(f, "file")));
        struct stat sb;
        json_t *bytes = json_object_get(f, "bytes");
        if (stat(path, &sb) != 0)
            return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
        if (!json_is_integer(bytes) || (json_int_t)sb.st_size != json_integer_value(bytes))
            return sov_fail(SOV_ERR_FORMAT, "%s: %lld bytes, the manifest says %lld", path, (long long)sb.st_size,
                            json_is_integer(bytes) ? (long long)json_integer_value(bytes) : -1LL);
    }
    sov_chunk_ref *refs;
    size_t n;
    SOV_CHECK(collect_chunks(c, NULL, 0, &refs, &n));
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
