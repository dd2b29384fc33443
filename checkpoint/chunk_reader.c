/* chunk_reader.c: see chunk_reader.h. */
#include "catalog.h"
#include "chunk_reader.h"
#include "codec.h"
#include "fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DECODERS 16
/* Reads in flight. The development VM's disk reads 2 and 4 MiB requests as fast at 2 in flight as at 4 or 8, and a
 * restore of a small state is faster with 2: reads in flight share the disk and come back together, so fewer of
 * them hand the decoders their first chunks sooner. With the default 2 MiB chunks that is 4 MiB in flight; an NVMe
 * drive may stream better with more (not measured yet: no such machine has run a restore). */
#define FETCHERS 2
#define MAX_BUFFERS (MAX_DECODERS + 2 * FETCHERS)
#define DIRECT_ALIGN 4096
#define BUFFER_MEMORY ((size_t)512 << 20) /* at most, unless two buffers need more (chunks of over 256 MiB) */

/* Sized by the largest chunk read so far, not by the checkpoint's chunk size: verifying a small checkpoint written
 * with 2 MiB chunks then neither allocates nor zeroes megabytes it never uses. */
struct sov_chunk_reader {
    size_t codec_bytes; /* the largest decoded chunk the codecs and scratch take */
    int decoders, buffers;
    sov_codec *codecs[MAX_DECODERS];
    uint8_t *scratch[MAX_DECODERS]; /* one decoded chunk, for chunks that are only verified */
    uint8_t *memory;                /* the buffers, back to back, for O_DIRECT reads (sov_io_alloc) */
    size_t memory_bytes, buffer_bytes;
};

sov_status sov_chunk_reader_create(sov_chunk_reader **out) {
    sov_chunk_reader *r = calloc(1, sizeof *r);
    if (!r)
        return sov_fail(SOV_ERR_NOMEM, "reading a checkpoint: out of memory");
    int cpus = sov_usable_cpus();
    r->decoders = cpus > MAX_DECODERS ? MAX_DECODERS : cpus;
    *out = r;
    return SOV_OK;
}

void sov_chunk_reader_destroy(sov_chunk_reader *r) {
    if (!r)
        return;
    for (int i = 0; i < MAX_DECODERS; i++) {
        sov_codec_destroy(r->codecs[i]);
        free(r->scratch[i]);
    }
    sov_io_free(r->memory, r->memory_bytes);
    free(r);
}

/* One run: the chunks, the queues between fetchers and decoders, and the first failure. */
typedef struct run {
    sov_chunk_reader *r;
    const char *dir;
    const char *const *files;
    const sov_chunk_ref *refs;
    size_t n;
    sov_chunk_keys keys;
    pthread_mutex_t lock;
    pthread_cond_t buffer_freed, chunk_read;
    size_t next_fetch;  /* the next chunk to read */
    size_t next_decode; /* chunks taken by decoders so far */
    int free_buffers[MAX_BUFFERS], n_free;
    struct read_chunk {
        int buffer;
        size_t chunk;
        uint8_t *data; /* where the chunk starts in its buffer */
        int opened;    /* a sealed chunk the fetcher has authenticated and decrypted already */
    } ready[MAX_BUFFERS];
    int n_ready;
    sov_status status; /* the first failure, with its message */
    char error[1024];
} run;

/* Under the lock: records the first failure and wakes everyone, so that all threads stop. */
static void fail_locked(run *j, sov_status st) {
    if (j->status == SOV_OK) {
        j->status = st;
        snprintf(j->error, sizeof j->error, "%s", sov_last_error());
    }
    pthread_cond_broadcast(&j->buffer_freed);
    pthread_cond_broadcast(&j->chunk_read);
}

static uint8_t *buffer_at(const run *j, int b) { return j->r->memory + (size_t)b * j->r->buffer_bytes; }

/* Reads n bytes at offset into buf; *data is where they start. With O_DIRECT (direct) the aligned span around
 * them is read, which a file's end may cut short. */
static sov_status read_span(int fd, int direct, uint8_t *buf, uint64_t offset, size_t n, const char *path,
                            uint8_t **data) {
    if (!direct) {
        *data = buf;
        return sov_pread_all(fd, buf, n, (off_t)offset, path);
    }
    uint64_t start = offset / DIRECT_ALIGN * DIRECT_ALIGN;
    size_t need = (size_t)(offset - start) + n, span = (need + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN, got = 0;
    while (got < need) {
        ssize_t r = pread(fd, buf + got, span - got, (off_t)(start + got));
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
    *data = buf + (offset - start);
    return SOV_OK;
}

/* A fetcher's open data file: the one its last chunk was in. */
typedef struct open_file {
    int fd, direct;
    size_t file;
    char path[4400];
} open_file;

static sov_status open_data_file(const run *j, size_t file, open_file *f) {
    if (f->fd >= 0 && f->file == file)
        return SOV_OK;
    if (f->fd >= 0)
        close(f->fd);
    snprintf(f->path, sizeof f->path, "%s/%s", j->dir, j->files[file]);
    f->file = file;
    /* O_DIRECT: chunks go from the disk to the buffer, with no page cache to fill; where it is refused (EINVAL),
     * buffered reads */
    if ((f->fd = open(f->path, O_RDONLY | O_CLOEXEC | O_DIRECT)) >= 0)
        f->direct = 1;
    else if ((f->fd = open(f->path, O_RDONLY | O_CLOEXEC)) >= 0)
        f->direct = 0;
    else
        return sov_fail(errno == ENOENT ? SOV_ERR_FORMAT : SOV_ERR_IO, "%s: %s", f->path, strerror(errno));
    return SOV_OK;
}

/* Where chunk c of a run is, for messages. */
static void chunk_where(const run *j, const sov_chunk_ref *c, char *where, size_t cap) {
    snprintf(where, cap, "%s/%s chunk at byte %llu", j->dir, j->files[c->file], (unsigned long long)c->file_offset);
}

/* Authenticates and decrypts a sealed chunk, read into `stored`, in place (crypto.h). */
static sov_status open_sealed(const run *j, const sov_chunk_ref *c, uint8_t *stored) {
    char where[4500];
    chunk_where(j, c, where, sizeof where);
    return sov_seal_open(&j->keys.file_keys[c->file], stored, (size_t)c->bytes, c->index, c->last, where);
}

/* Reads chunk i into buffer b; *data is where it starts there. */
static sov_status fetch_chunk(const run *j, size_t i, int b, open_file *f, uint8_t **data) {
    const sov_chunk_ref *c = &j->refs[i];
    SOV_CHECK(open_data_file(j, c->file, f));
    return read_span(f->fd, f->direct, buffer_at(j, b), c->file_offset, (size_t)c->bytes + c->pad, f->path, data);
}

static void *fetcher_main(void *arg) {
    run *j = arg;
    open_file f = {.fd = -1};
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (j->status == SOV_OK && j->next_fetch < j->n && j->n_free == 0)
            pthread_cond_wait(&j->buffer_freed, &j->lock);
        if (j->status != SOV_OK || j->next_fetch >= j->n)
            break;
        size_t i = j->next_fetch++;
        int b = j->free_buffers[--j->n_free];
        pthread_mutex_unlock(&j->lock);
        uint8_t *data = NULL;
        sov_status st = fetch_chunk(j, i, b, &f, &data);
        int opened = st == SOV_OK && j->keys.file_keys;
        if (opened) /* decrypting here keeps the cores busy while the decoders wait for chunks */
            st = open_sealed(j, &j->refs[i], data);
        pthread_mutex_lock(&j->lock);
        if (st != SOV_OK) {
            fail_locked(j, st);
            break;
        }
        j->ready[j->n_ready++] = (struct read_chunk){.buffer = b, .chunk = i, .data = data, .opened = opened};
        pthread_cond_signal(&j->chunk_read);
    }
    pthread_mutex_unlock(&j->lock);
    if (f.fd >= 0)
        close(f.fd);
    return NULL;
}

/* The part of box b's rows that lies in the decoded chunk (the buffer's elements [eo, eo + n) at `raw`), copied to
 * the destination dst. The rows come in the order of their elements in the shard, so the walk stops past the chunk. */
static void scatter_rows(const sov_box_scatter *b, size_t eo, size_t n, const uint8_t *raw, uint8_t *dst) {
    int last = b->ndim - 1;
    int64_t idx[SOV_CKPT_MAX_DIMS] = {0}, from[SOV_CKPT_MAX_DIMS], to[SOV_CKPT_MAX_DIMS];
    for (;;) {
        for (int d = 0; d < b->ndim; d++) {
            from[d] = b->in_shard[d] + idx[d];
            to[d] = b->in_req[d] + idx[d];
        }
        size_t rs = b->at + (size_t)sov_box_flat(b->ndim, b->shard_shape, from), re = rs + (size_t)b->part[last];
        if (rs >= eo + n)
            return;
        size_t a = rs > eo ? rs : eo, z = re < eo + n ? re : eo + n;
        if (a < z)
            memcpy(dst + ((size_t)sov_box_flat(b->ndim, b->req_shape, to) + (a - rs)) * b->elem_bytes,
                   raw + (a - eo) * b->elem_bytes, (z - a) * b->elem_bytes);
        int d = last - 1; /* the next row */
        while (d >= 0 && ++idx[d] == b->part[d])
            idx[d--] = 0;
        if (d < 0)
            return;
    }
}

/* An encrypted checkpoint's chunk, read into `stored`: checked, then (with the keys) decrypted in place, unless
 * that was done (`opened`). *encoded and *bytes are then the encoded chunk inside it; *only_checked says there is
 * nothing to decode. */
static sov_status unseal(const run *j, const sov_chunk_ref *c, uint8_t *stored, int opened, const char *where,
                         const uint8_t **encoded, size_t *bytes, int *only_checked) {
    *encoded = stored;
    *bytes = (size_t)c->bytes;
    *only_checked = 0;
    if (!j->keys.sealed)
        return SOV_OK;
    if (!j->keys.file_keys) {
        if (c->nwindows)
            return sov_fail(SOV_ERR_INTERNAL, "%s: a read of an encrypted checkpoint without its key", where);
        *only_checked = 1;
        return sov_seal_check(stored, (size_t)c->bytes, c->index, c->last, where);
    }
    if (!opened)
        SOV_CHECK(open_sealed(j, c, stored));
    *encoded = stored + SOV_SEAL_HEADER_BYTES;
    *bytes = (size_t)c->bytes - SOV_SEAL_OVERHEAD;
    return SOV_OK;
}

/* Checks chunk c's padding and decodes it, read into `stored`, with decoder d's codec. */
static sov_status decode_chunk(const run *j, int d, const sov_chunk_ref *c, uint8_t *stored, int opened) {
    char where[4500];
    chunk_where(j, c, where, sizeof where);
    for (size_t k = 0; k < c->pad; k++)
        if (stored[c->bytes + k])
            return sov_fail(SOV_ERR_FORMAT, "%s: the %zu bytes of padding after it are not all zero (byte %llu is "
                            "damaged)", where, c->pad, (unsigned long long)(c->file_offset + c->bytes + k));
    const uint8_t *encoded;
    size_t encoded_bytes;
    int only_checked;
    SOV_CHECK(unseal(j, c, stored, opened, where, &encoded, &encoded_bytes, &only_checked));
    if (only_checked)
        return SOV_OK;
    size_t got = 0, want = c->elems * c->elem_bytes;
    int in_place = sov_chunk_in_place(c);
    uint8_t *dst = in_place ? c->windows[0].dst + (c->elem_offset - c->windows[0].lo) * c->elem_bytes
                            : j->r->scratch[d];
    SOV_CHECK((encoded != stored ? sov_chunk_decode_authenticated : sov_chunk_decode)(j->r->codecs[d], encoded,
                                                                                      encoded_bytes, dst, want, &got,
                                                                                      where));
    if (got != want)
        return sov_fail(SOV_ERR_FORMAT, "%s: decodes to %zu bytes, the manifest says %zu elements", where, got,
                        c->elems);
    for (int w = 0; !in_place && w < c->nwindows; w++) { /* each window's part of the chunk */
        const sov_chunk_window *win = &c->windows[w];
        size_t end = c->elem_offset + c->elems, lo = win->lo > c->elem_offset ? win->lo : c->elem_offset,
               hi = win->hi < end ? win->hi : end;
        if (win->box)
            scatter_rows(win->box, c->elem_offset, c->elems, dst, win->dst);
        else if (lo < hi)
            memcpy(win->dst + (lo - win->lo) * c->elem_bytes, dst + (lo - c->elem_offset) * c->elem_bytes,
                   (hi - lo) * c->elem_bytes);
    }
    return SOV_OK;
}

typedef struct decoder_arg {
    run *job;
    int index;
} decoder_arg;

static void *decoder_main(void *arg) {
    run *j = ((decoder_arg *)arg)->job;
    int d = ((decoder_arg *)arg)->index;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (j->status == SOV_OK && j->next_decode < j->n && j->n_ready == 0)
            pthread_cond_wait(&j->chunk_read, &j->lock);
        if (j->status != SOV_OK || j->next_decode >= j->n)
            break;
        struct read_chunk rc = j->ready[--j->n_ready];
        if (++j->next_decode == j->n) /* the last chunk: the decoders waiting for one can stop */
            pthread_cond_broadcast(&j->chunk_read);
        pthread_mutex_unlock(&j->lock);
        sov_status st = decode_chunk(j, d, &j->refs[rc.chunk], rc.data, rc.opened);
        pthread_mutex_lock(&j->lock);
        j->free_buffers[j->n_free++] = rc.buffer;
        pthread_cond_signal(&j->buffer_freed);
        if (st != SOV_OK) {
            fail_locked(j, st);
            break;
        }
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

/* Reads and decodes every chunk in turn on the calling thread, with decoder 0 and buffer 0. */
static sov_status read_serially(const run *j) {
    open_file f = {.fd = -1};
    sov_status st = SOV_OK;
    for (size_t i = 0; i < j->n && st == SOV_OK; i++) {
        uint8_t *data = NULL;
        st = fetch_chunk(j, i, 0, &f, &data);
        if (st == SOV_OK)
            st = decode_chunk(j, 0, &j->refs[i], data, 0);
    }
    if (f.fd >= 0)
        close(f.fd);
    return st;
}

/* Codecs and scratch for `decoders` decoders, for chunks that decode to at most raw_bytes. */
static sov_status codecs_ready(sov_chunk_reader *r, int decoders, int scratch, size_t raw_bytes) {
    if (raw_bytes > r->codec_bytes) { /* bigger chunks than before: make them anew */
        for (int d = 0; d < MAX_DECODERS; d++) {
            sov_codec_destroy(r->codecs[d]);
            free(r->scratch[d]);
            r->codecs[d] = NULL;
            r->scratch[d] = NULL;
        }
        r->codec_bytes = raw_bytes;
    }
    for (int d = 0; d < decoders; d++) {
        if (!r->codecs[d])
            SOV_CHECK(sov_codec_create(&r->codecs[d], r->codec_bytes));
        if (scratch && !r->scratch[d] && !(r->scratch[d] = malloc(r->codec_bytes)))
            return sov_fail(SOV_ERR_NOMEM, "reading a checkpoint: out of memory for decoding scratch");
    }
    return SOV_OK;
}

/* Read buffers for stored chunks (with their padding) of at most span bytes. */
static sov_status buffers_ready(sov_chunk_reader *r, size_t span) {
    /* the chunk and the aligned blocks around it: it may start anywhere in a block (formats before version 3) */
    size_t buffer_bytes = (span / DIRECT_ALIGN + 2) * DIRECT_ALIGN;
    if (r->memory && r->buffer_bytes >= buffer_bytes)
        return SOV_OK;
    sov_io_free(r->memory, r->memory_bytes);
    r->buffer_bytes = buffer_bytes;
    /* decoders at work, reads in flight, and as many read chunks waiting, so that a batch of reads that comes
     * back together does not hold up the next batch; big chunks get fewer, down to one read and one decode */
    size_t fit = BUFFER_MEMORY / buffer_bytes;
    r->buffers = r->decoders + 2 * FETCHERS;
    r->buffers = fit < 2 ? 2 : fit < (size_t)r->buffers ? (int)fit : r->buffers;
    r->memory_bytes = (size_t)r->buffers * buffer_bytes;
    if (!(r->memory = sov_io_alloc(r->memory_bytes)))
        return sov_fail(SOV_ERR_NOMEM, "reading a checkpoint: cannot allocate %zu MiB of read buffers",
                        r->memory_bytes >> 20);
    return SOV_OK;
}

static int at_most(size_t n, int cap) { return n < (size_t)cap ? (n ? (int)n : 1) : cap; }

sov_status sov_chunk_reader_run(sov_chunk_reader *r, const char *dir, const char *const *files,
                                const sov_chunk_ref *refs, size_t n, const sov_chunk_keys *keys) {
    if (n == 0)
        return SOV_OK;
    int scratch = 0; /* some chunk decodes outside its windows */
    size_t raw_bytes = 0, span = 0;
    for (size_t i = 0; i < n; i++) { /* the largest chunk, decoded and as stored with its padding */
        size_t decoded = refs[i].elems * refs[i].elem_bytes, stored = (size_t)refs[i].bytes + refs[i].pad;
        scratch |= !sov_chunk_in_place(&refs[i]);
        raw_bytes = decoded > raw_bytes ? decoded : raw_bytes;
        span = stored > span ? stored : span;
    }
    int decoders = at_most(n, r->decoders), fetchers = at_most(n, FETCHERS);
    SOV_CHECK(codecs_ready(r, decoders, scratch, raw_bytes));
    SOV_CHECK(buffers_ready(r, span));
    run j = {.r = r, .dir = dir, .files = files, .refs = refs, .n = n, .status = SOV_OK};
    if (keys)
        j.keys = *keys;
    for (int b = 0; b < r->buffers; b++)
        j.free_buffers[j.n_free++] = b;
    pthread_mutex_init(&j.lock, NULL);
    pthread_cond_init(&j.buffer_freed, NULL);
    pthread_cond_init(&j.chunk_read, NULL);
    pthread_t tids[MAX_DECODERS + FETCHERS];
    decoder_arg args[MAX_DECODERS];
    int started = 0;
    for (int f = 0; f < fetchers; f++)
        if (pthread_create(&tids[started], NULL, fetcher_main, &j) == 0)
            started++;
    if (started == 0) { /* no thread to read with (a thread limit): one chunk at a time, on this thread */
        j.status = read_serially(&j);
        if (j.status != SOV_OK)
            snprintf(j.error, sizeof j.error, "%s", sov_last_error());
    } else {
        for (int d = 1; d < decoders; d++) { /* fewer threads than asked for only means a slower read */
            args[d] = (decoder_arg){.job = &j, .index = d};
            if (pthread_create(&tids[started], NULL, decoder_main, &args[d]) == 0)
                started++;
        }
        args[0] = (decoder_arg){.job = &j, .index = 0};
        decoder_main(&args[0]); /* this thread decodes too */
    }
    for (int t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    pthread_cond_destroy(&j.chunk_read);
    pthread_cond_destroy(&j.buffer_freed);
    pthread_mutex_destroy(&j.lock);
    return j.status == SOV_OK ? SOV_OK : sov_fail(j.status, "%s", j.error);
}
