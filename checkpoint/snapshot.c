/* snapshot.c: see snapshot.h. */
#include "snapshot.h"

#include <stdlib.h>
#include <string.h>

void sov_snapshot_init(sov_snapshot *s) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->changed, NULL);
}

void sov_snapshot_destroy(sov_snapshot *s) {
    free(s->pieces);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->changed);
}

void sov_snapshot_begin(sov_snapshot *s, uint8_t *staging, size_t share, int sources_readable) {
    pthread_mutex_lock(&s->lock);
    s->staging = staging;
    s->share = share;
    s->npieces = 0;
    s->prefix = s->claimed = 0;
    s->copied_from = s->copy_floor = share;
    s->readers = 0;
    s->open = sources_readable; /* the caller is in save from here; only host memory may be read */
    s->done = s->failed = 0;
    pthread_mutex_unlock(&s->lock);
}

sov_status sov_snapshot_add(sov_snapshot *s, const void *src, size_t bytes) {
    struct sov_snapshot_piece *last = s->npieces ? &s->pieces[s->npieces - 1] : NULL;
    return sov_snapshot_add_at(s, src, last ? last->at + last->bytes : 0, bytes);
}

sov_status sov_snapshot_add_at(sov_snapshot *s, const void *src, size_t at, size_t bytes) {
    struct sov_snapshot_piece *last = s->npieces ? &s->pieces[s->npieces - 1] : NULL;
    if (bytes == 0)
        return SOV_OK;
    if (last && at < last->at + last->bytes)
        return sov_fail(SOV_ERR_INTERNAL, "checkpoint snapshot: a piece at %zu overlaps the one before", at);
    if (last && at == last->at + last->bytes && (const uint8_t *)last->src + last->bytes == (const uint8_t *)src) {
        last->bytes += bytes;
        return SOV_OK;
    }
    if (s->npieces == s->pieces_cap) {
        int cap = s->pieces_cap ? 2 * s->pieces_cap : 16;
        struct sov_snapshot_piece *grown = realloc(s->pieces, (size_t)cap * sizeof *grown);
        if (!grown)
            return sov_fail(SOV_ERR_NOMEM, "checkpoint snapshot: no memory for %d pieces", cap);
        s->pieces = grown;
        s->pieces_cap = cap;
        last = s->npieces ? &s->pieces[s->npieces - 1] : NULL;
    }
    s->pieces[s->npieces++] = (struct sov_snapshot_piece){.src = src, .at = at, .bytes = bytes};
    return SOV_OK;
}

/* The piece that holds staging byte `at` (the pieces are in staging order). */
static const struct sov_snapshot_piece *piece_at(const sov_snapshot *s, size_t at) {
    int lo = 0, hi = s->npieces - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (s->pieces[mid].at <= at)
            lo = mid;
        else
            hi = mid - 1;
    }
    return &s->pieces[lo];
}

/* A chunk is claimed only while CLAIM_MARGIN times its size is still to be copied above it: the copy runs ~7x faster
 * than one encoder here, so the caller, which waits for every claimed chunk before it returns, does not wait long
 * for the last one (and never for a chunk near the size of the state). */
#define CLAIM_MARGIN 8

/* Claims are taken in staging order, so staging[0, claimed) is one run of chunks read from the pieces, and the copy
 * from the back never reaches into it: it stops at `claimed`, and a chunk is claimed only below the copy's floor. */
const uint8_t *sov_snapshot_claim(sov_snapshot *s, size_t a, size_t b, int *gather) {
    const uint8_t *src = NULL;
    *gather = 0;
    pthread_mutex_lock(&s->lock);
    if (s->open && a == s->claimed && b <= s->copy_floor && (s->copied_from - b) / CLAIM_MARGIN >= b - a &&
        s->npieces > 0) {
        const struct sov_snapshot_piece *p = piece_at(s, a);
        /* the codec reads elements of up to 8 bytes: only a source so aligned is read in place */
        int in_place = a >= p->at && b <= p->at + p->bytes && ((uintptr_t)p->src + (a - p->at)) % 8 == 0;
        src = in_place ? (const uint8_t *)p->src + (a - p->at) : s->staging + a;
        *gather = !in_place;
        s->claimed = b;
        s->readers++;
    }
    pthread_mutex_unlock(&s->lock);
    return src;
}

void sov_snapshot_gather(sov_snapshot *s, size_t a, size_t b) {
    for (int i = 0; i < s->npieces && s->pieces[i].at < b; i++) { /* the pieces do not change during a save */
        const struct sov_snapshot_piece *p = &s->pieces[i];
        size_t lo = p->at > a ? p->at : a, hi = p->at + p->bytes < b ? p->at + p->bytes : b;
        if (lo < hi)
            memcpy(s->staging + lo, (const uint8_t *)p->src + (lo - p->at), hi - lo);
    }
}

void sov_snapshot_release(sov_snapshot *s) {
    pthread_mutex_lock(&s->lock);
    s->readers--;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

static sov_status failure(void) { return sov_fail(SOV_ERR_INTERNAL, "the snapshot of the state failed"); }

sov_status sov_snapshot_final(sov_snapshot *s, size_t a, size_t b) {
    pthread_mutex_lock(&s->lock);
    while (!s->failed && !s->done && b > s->prefix && a < s->copied_from)
        pthread_cond_wait(&s->changed, &s->lock);
    int failed = s->failed;
    pthread_mutex_unlock(&s->lock);
    return failed ? failure() : SOV_OK;
}

/* [0, SIZE_MAX): final only when the whole staging is, or when the snapshot is done (its front read, not copied). */
sov_status sov_snapshot_wait_done(sov_snapshot *s) { return sov_snapshot_final(s, 0, SIZE_MAX); }

int sov_snapshot_has_failed(sov_snapshot *s) {
    pthread_mutex_lock(&s->lock);
    int failed = s->failed;
    pthread_mutex_unlock(&s->lock);
    return failed;
}

static void publish_prefix(sov_snapshot *s, size_t prefix, int failed) {
    pthread_mutex_lock(&s->lock);
    s->prefix = prefix;
    s->failed = failed;
    s->done = !failed && prefix == s->share;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

sov_status sov_snapshot_copy_forward(sov_snapshot *s, sov_snapshot_copy_fn copy, void *ctx, size_t first,
                                     size_t block, sov_status (*after_first)(void *arg), void *arg) {
    for (int i = 0; i < s->npieces; i++) {
        const struct sov_snapshot_piece *p = &s->pieces[i];
        for (size_t done = 0, n, at; done < p->bytes; done += n) {
            at = p->at + done; /* pieces may leave gaps between them (aligned starts): those are never read */
            n = after_first && at < first ? first - at : block;
            n = p->bytes - done < n ? p->bytes - done : n;
            sov_status st = copy(ctx, s->staging + at, (const uint8_t *)p->src + done, n);
            if (st != SOV_OK) {
                publish_prefix(s, at, 1);
                return st;
            }
            at += n;
            publish_prefix(s, at, 0);
            if (after_first && at >= first) {
                SOV_CHECK(after_first(arg));
                after_first = NULL;
            }
        }
    }
    if (s->npieces == 0)
        publish_prefix(s, 0, 0);
    return after_first ? after_first(arg) : SOV_OK;
}

/* Near the encoders the copy goes in smaller steps: an encoder that reaches the span being copied waits until it is
 * done, and a whole block's wait (6 ms for 64 MiB) left the disk idle for 4 ms of each 256 MiB save here. Each
 * step takes half of what lies between the two, down to MEET_MIN bytes, so the encoders never wait for more. */
#define MEET_MIN ((size_t)1 << 20)

static size_t next_span(const sov_snapshot *s, size_t block) {
    size_t gap = s->copied_from - s->claimed, span = gap / 2 < MEET_MIN ? gap : gap / 2;
    return span < block ? span : block;
}

void sov_snapshot_copy_backward(sov_snapshot *s, sov_snapshot_copy_fn copy, void *ctx, size_t block) {
    pthread_mutex_lock(&s->lock);
    while (s->copied_from > s->claimed) {
        const struct sov_snapshot_piece *p = piece_at(s, s->copied_from - 1);
        if (s->copied_from > p->at + p->bytes) { /* a gap between pieces: nothing to copy there */
            s->copied_from = s->copy_floor = p->at + p->bytes > s->claimed ? p->at + p->bytes : s->claimed;
            pthread_cond_broadcast(&s->changed);
            continue;
        }
        size_t end = s->copied_from, span = next_span(s, block), from = end - p->at > span ? end - span : p->at;
        s->copy_floor = from;
        pthread_mutex_unlock(&s->lock);
        (void)copy(ctx, s->staging + from, (const uint8_t *)p->src + (from - p->at), end - from); /* host memcpy */
        pthread_mutex_lock(&s->lock);
        s->copied_from = from;
        pthread_cond_broadcast(&s->changed);
    }
    s->copy_floor = s->copied_from; /* no claim from here on: the rest is final in staging */
    s->open = 0;
    while (s->readers > 0)
        pthread_cond_wait(&s->changed, &s->lock);
    s->done = 1;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}
