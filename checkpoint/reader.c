/* reader.c: opening, verifying and reading checkpoints, hardened against damaged input: every size, count and
 * offset from a manifest or chunk header is checked before it is used, and nothing is allocated by an unchecked
 * size. */
#include "ckpt.h"
#include "codec.h"
#include "fsio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_MAX_BYTES ((size_t)64 << 20)

#define MAX_READ_THREADS 8

#define DIRECT_ALIGN 4096

typedef struct decoder { /* one reading thread's tools, created at the first read and reused */
    sov_codec *codec;
    uint8_t *chunk;   /* one stored chunk and the aligned span around it (O_DIRECT reads) */
    size_t chunk_cap; /* its bytes */
    uint8_t *scratch; /* one decoded chunk, when verifying only */
    int direct;       /* the open file is read with O_DIRECT */
} decoder;

struct sov_ckpt {
    char path[4096];
    json_t *manifest;
    long step;
    size_t chunk_bytes;
    uint64_t align; /* where chunks start in a data file: multiples of this (1: back to back) */
    decoder decoders[MAX_READ_THREADS];
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
                        SOVTRAIN_VERSION, SOV_CKPT_FORMAT_VERSION_OLDEST, SOV_CKPT_FORMAT_VERSION);
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
    for (int i = 0; i < MAX_READ_THREADS; i++) {
        sov_codec_destroy(c->decoders[i].codec);
        sov_io_free(c->decoders[i].chunk, c->decoders[i].chunk_cap);
        free(c->decoders[i].scratch);
    }
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

typedef struct chunk_ref {
    size_t file;      /* index into files */
    size_t elem_offset, elems;
    size_t elem_bytes; /* of the chunk's buffer */
    uint64_t file_offset, bytes;
    size_t pad;       /* bytes of zeros after it in the file (to the next chunk's aligned start) */
    uint8_t *dst;     /* the start of the buffer it decodes into; NULL: verify only */
} chunk_ref;

static int by_offset(const void *a, const void *b) {
    const chunk_ref *x = a, *y = b;
    return x->elem_offset < y->elem_offset ? -1 : x->elem_offset > y->elem_offset;
}

/* File order: the threads of a restore then read each file front to back, whatever buffers its chunks hold. */
static int by_place(const void *a, const void *b) {
    const chunk_ref *x = a, *y = b;
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

/* The chunks of buffer `name` (all when name is NULL), checked: within the buffer, sizes plausible. */
static sov_status collect_chunks(const sov_ckpt *c, const char *name, size_t count, chunk_ref **out, size_t *n_out) {
    json_t *files = json_object_get(c->manifest, "files"), *f, *ch;
    size_t fi, ci, n = 0, cap = 0;
    chunk_ref *refs = NULL;
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
                chunk_ref *grown = realloc(refs, cap * sizeof *refs);
                if (!grown) {
                    free(refs);
                    return sov_fail(SOV_ERR_NOMEM, "reading %s: out of memory", c->path);
                }
                refs = grown;
            }
            uint64_t end = (uint64_t)json_integer_value(fo) + (uint64_t)json_integer_value(by),
                     file_end = (uint64_t)json_integer_value(json_object_get(f, "bytes")); /* check_layout's */
            refs[n++] = (chunk_ref){.file = fi, .elem_offset = (size_t)json_integer_value(eo),
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

/* Reading the chunks of a restore or a verify: threads take chunks in turn, each reading its own and decoding it
 * into place, so that decoding overlaps the reads and uses every core (chunks are independent by design). */
typedef struct read_job {
    sov_ckpt *c;
    const chunk_ref *refs;
    size_t n, next;
    int verify_only; /* decode into scratch and drop (the refs have no dst) */
    pthread_mutex_t lock;
    sov_status status; /* the first failure, with its message */
    char error[1024];
} read_job;

typedef struct read_worker {
    read_job *job;
    decoder *d;
} read_worker;

static sov_status decoder_ready(decoder *d, size_t chunk_bytes, int verify_only) {
    if (!d->codec)
        SOV_CHECK(sov_codec_create(&d->codec, chunk_bytes));
    if (!d->chunk) {
        d->chunk_cap = (sov_chunk_bound(chunk_bytes) / DIRECT_ALIGN + 2) * DIRECT_ALIGN;
        if (!(d->chunk = sov_io_alloc(d->chunk_cap)))
            return sov_fail(SOV_ERR_NOMEM, "reading a checkpoint: cannot allocate a chunk buffer");
    }
    if (verify_only && !d->scratch && !(d->scratch = sov_malloc(chunk_bytes)))
        return SOV_ERR_NOMEM;
    return SOV_OK;
}

/* Reads n bytes at offset into d->chunk; *data is where they start. With O_DIRECT (direct) the aligned span
 * around them is read, which a file's end may cut short. */
static sov_status read_span(int fd, int direct, decoder *d, uint64_t offset, size_t n, const char *path,
                            const uint8_t **data) {
    if (!direct) {
        *data = d->chunk;
        return sov_pread_all(fd, d->chunk, n, (off_t)offset, path);
    }
    uint64_t start = offset / DIRECT_ALIGN * DIRECT_ALIGN;
    size_t need = (size_t)(offset - start) + n, span = (need + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN, got = 0;
    while (got < need) {
        ssize_t r = pread(fd, d->chunk + got, span - got, (off_t)(start + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return sov_fail(SOV_ERR_IO, "reading %s: %s", path, strerror(errno));
        got += (size_t)r;
        if (r == 0 || r % DIRECT_ALIGN)
            break; /* the end of the file */
    }
    if (got < need)
        return sov_fail(SOV_ERR_FORMAT, "%s: truncated (ends %zu bytes early at offset %llu)", path, need - got,
                        (unsigned long long)(start + got));
    *data = d->chunk + (offset - start);
    return SOV_OK;
}

/* Reads and decodes refs[i] with d, keeping the file it is in open in *fd. */
static sov_status read_chunk(read_job *j, decoder *d, size_t i, int *fd, size_t *open_file, char *path, size_t cap) {
    const chunk_ref *r = &j->refs[i];
    if (r->file != *open_file) {
        if (*fd >= 0)
            close(*fd);
        json_t *files = json_object_get(j->c->manifest, "files");
        snprintf(path, cap, "%s/%s", j->c->path,
                 json_string_value(json_object_get(json_array_get(files, r->file), "file")));
        /* O_DIRECT: chunks go from the disk to this thread's buffer, with no page cache to fill and several reads
         * in flight at once (one per thread); where it is refused (EINVAL), buffered reads */
        if ((*fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT)) >= 0)
            d->direct = 1;
        else if ((*fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0)
            d->direct = 0;
        else
            return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
        *open_file = r->file;
    }
    char where[4500];
    snprintf(where, sizeof where, "%s chunk at byte %llu", path, (unsigned long long)r->file_offset);
    const uint8_t *stored = NULL;
    SOV_CHECK(read_span(*fd, d->direct, d, r->file_offset, (size_t)r->bytes + r->pad, path, &stored));
    for (size_t k = 0; k < r->pad; k++)
        if (stored[r->bytes + k])
            return sov_fail(SOV_ERR_FORMAT, "%s: the %zu bytes of padding after it are not all zero (byte %llu is "
                            "damaged)", where, r->pad, (unsigned long long)(r->file_offset + r->bytes + k));
    size_t got = 0;
    SOV_CHECK(sov_chunk_decode(d->codec, stored, (size_t)r->bytes,
                               r->dst ? r->dst + r->elem_offset * r->elem_bytes : d->scratch, r->elems * r->elem_bytes,
                               &got, where));
    if (got != r->elems * r->elem_bytes)
        return sov_fail(SOV_ERR_FORMAT, "%s: decodes to %zu bytes, the manifest says %zu elements", where, got,
                        r->elems);
    return SOV_OK;
}

static void *read_worker_main(void *arg) {
    read_worker *rw = arg;
    read_job *j = rw->job;
    int fd = -1;
    size_t open_file = (size_t)-1;
    char path[4400] = "";
    sov_status st = decoder_ready(rw->d, j->c->chunk_bytes, j->verify_only);
    for (;;) {
        pthread_mutex_lock(&j->lock);
        if (st != SOV_OK && j->status == SOV_OK) {
            j->status = st;
            snprintf(j->error, sizeof j->error, "%s", sov_last_error());
        }
        size_t i = j->next++;
        int done = j->status != SOV_OK || i >= j->n;
        pthread_mutex_unlock(&j->lock);
        if (done)
            break;
        st = read_chunk(j, rw->d, i, &fd, &open_file, path, sizeof path);
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* Two threads per core: while one waits for its read, the other decodes. */
static int read_threads(size_t chunks) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t t = cpus < 1 ? 2 : 2 * (size_t)cpus > MAX_READ_THREADS ? MAX_READ_THREADS : 2 * (size_t)cpus;
    return (int)(chunks < t ? (chunks ? chunks : 1) : t);
}

/* Reads and decodes the chunks in refs, each into its dst + elem_offset (verify_only: into scratch). */
static sov_status decode_chunks(sov_ckpt *c, const chunk_ref *refs, size_t n, int verify_only) {
    read_job j = {.c = c, .refs = refs, .n = n, .verify_only = verify_only, .status = SOV_OK};
    pthread_mutex_init(&j.lock, NULL);
    int threads = read_threads(n), started = 1;
    pthread_t tids[MAX_READ_THREADS];
    read_worker workers[MAX_READ_THREADS];
    for (int t = 0; t < threads; t++)
        workers[t] = (read_worker){.job = &j, .d = &c->decoders[t]};
    for (; started < threads; started++) /* fewer threads than asked for only means a slower read */
        if (pthread_create(&tids[started], NULL, read_worker_main, &workers[started]) != 0)
            break;
    read_worker_main(&workers[0]); /* this thread reads too */
    for (int t = 1; t < started; t++)
        pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&j.lock);
    return j.status == SOV_OK ? SOV_OK : sov_fail(j.status, "%s", j.error);
}

/* The chunks of one buffer the caller asked for, checked against its count and dtype, appended to *all. */
static sov_status add_buffer_chunks(sov_ckpt *c, const sov_ckpt_buffer *b, chunk_ref **all, size_t *n_all) {
    size_t have = sov_ckpt_buffer_count(c, b->name);
    if (have != b->count)
        return sov_fail(SOV_ERR_INVALID, "%s: buffer \"%s\" has %zu elements, %zu expected (a different model or "
                        "optimizer?)", c->path, b->name, have, b->count);
    if (sov_ckpt_buffer_elem_bytes(c, b->name) != sov_ckpt_dtype_bytes(b->dtype))
        return sov_fail(SOV_ERR_INVALID, "%s: buffer \"%s\" holds %s elements, %s expected", c->path, b->name,
                        json_string_value(json_object_get(buffer_entry(c, b->name), "dtype")),
                        sov_ckpt_dtype_name(b->dtype));
    chunk_ref *refs;
    size_t n;
    SOV_CHECK(collect_chunks(c, b->name, b->count, &refs, &n));
    chunk_ref *grown = realloc(*all, (*n_all + n + 1) * sizeof *grown);
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
    chunk_ref *refs = NULL;
    size_t n = 0;
    sov_status st = SOV_OK;
    for (int b = 0; b < num_buffers && st == SOV_OK; b++)
        st = add_buffer_chunks(c, &buffers[b], &refs, &n);
    if (st == SOV_OK && n)
        qsort(refs, n, sizeof *refs, by_place);
    if (st == SOV_OK)
        st = decode_chunks(c, refs, n, 0);
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
        chunk_ref *refs;
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
    chunk_ref *refs;
    size_t n;
    SOV_CHECK(collect_chunks(c, NULL, 0, &refs, &n));
    sov_status st = decode_chunks(c, refs, n, 1);
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
