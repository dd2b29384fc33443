/* stream.c: see stream.h. */
#include "stream.h"
#include "fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITEBACK_WINDOW ((uint64_t)16 << 20)

static int direct_wanted(void) {
    const char *e = getenv("SOVTRAIN_CKPT_DIRECT");
    return !(e && strcmp(e, "0") == 0);
}

/* One aligned block to the disk at offset. A short write that keeps the alignment goes on; one that does not
 * cannot (O_DIRECT needs aligned offsets): the device refused more, which is a full disk in practice. */
static sov_status write_direct(int fd, const char *path, const uint8_t *block, size_t n, uint64_t offset) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(fd, block + done, n - done, (off_t)(offset + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return sov_fail(SOV_ERR_IO, "writing %s: %s", path, strerror(errno));
        if (w == 0 || (size_t)w % SOV_STREAM_ALIGN != 0)
            return sov_fail(SOV_ERR_IO, "writing %s: the device took only %zu of %zu bytes (no space left on it?)",
                            path, done + (size_t)w, n);
        done += (size_t)w;
    }
    return SOV_OK;
}

/* The helper: writes the queued blocks in order and reports the first failure (after which it only drains the
 * queue). It keeps the default policy even when its creator runs under SCHED_BATCH (the checkpoint writer does):
 * the disk waits whenever this thread waits for a core. */
static void *io_main(void *arg) {
    sov_stream *s = arg;
    struct sched_param none = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_OTHER, &none);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->queued && !s->io_stop)
            pthread_cond_wait(&s->changed, &s->lock);
        if (!s->queued)
            break;
        int b = s->head, failed = s->io_status != SOV_OK;
        pthread_mutex_unlock(&s->lock);
        sov_status st = failed ? SOV_OK : write_direct(s->fd, s->path, s->buf[b], s->io_bytes[b], s->io_offset[b]);
        pthread_mutex_lock(&s->lock);
        if (st != SOV_OK) {
            s->io_status = st;
            snprintf(s->io_error, sizeof s->io_error, "%s", sov_last_error());
        }
        s->head = (s->head + 1) % SOV_STREAM_BLOCKS;
        s->queued--;
        pthread_cond_broadcast(&s->changed);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Waits until the helper has written every queued block; returns its first failure. */
static sov_status io_idle(sov_stream *s) {
    pthread_mutex_lock(&s->lock);
    while (s->queued)
        pthread_cond_wait(&s->changed, &s->lock);
    sov_status st = s->io_status;
    pthread_mutex_unlock(&s->lock);
    return st == SOV_OK ? SOV_OK : sov_fail(st, "%s", s->io_error);
}

/* Queues the first n bytes of the block being filled (n aligned) for the helper and moves on to the next block,
 * once that one is free: not waiting to be written, nor being written. What the block holds beyond n (less than
 * one alignment unit, after an early hand-over) moves to the start of the next. */
static sov_status hand_over(sov_stream *s, size_t n) {
    pthread_mutex_lock(&s->lock);
    while (s->queued == SOV_STREAM_BLOCKS - 1)
        pthread_cond_wait(&s->changed, &s->lock);
    sov_status st = s->io_status;
    s->io_bytes[s->cur] = n;
    s->io_offset[s->cur] = s->pos - s->fill;
    s->queued++;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
    int next = (s->cur + 1) % SOV_STREAM_BLOCKS;
    size_t rest = s->fill > n ? s->fill - n : 0;
    memcpy(s->buf[next], s->buf[s->cur] + n, rest);
    s->cur = next;
    s->fill = rest;
    return st == SOV_OK ? SOV_OK : sov_fail(st, "%s", s->io_error);
}

static int disk_idle(sov_stream *s) {
    pthread_mutex_lock(&s->lock);
    int idle = s->queued == 0;
    pthread_mutex_unlock(&s->lock);
    return idle;
}

static void io_stop(sov_stream *s) {
    if (!s->io_started)
        return;
    pthread_mutex_lock(&s->lock);
    while (s->queued)
        pthread_cond_wait(&s->changed, &s->lock);
    s->io_stop = 1;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->io, NULL);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->changed);
    s->io_started = 0;
}

sov_status sov_stream_open(sov_stream *s, const char *path, void *scratch) {
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    for (int b = 0; b < SOV_STREAM_BLOCKS; b++)
        s->buf[b] = (uint8_t *)scratch + (size_t)b * SOV_STREAM_BLOCK;
    s->fd = -1;
    if (direct_wanted()) {
        s->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0644);
        s->direct = s->fd >= 0;
    }
    if (s->fd < 0) /* EINVAL: this filesystem has no O_DIRECT; any other error repeats below with its message */
        s->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s->fd < 0)
        return sov_fail(SOV_ERR_IO, "creating %s: %s", path, strerror(errno));
    if (s->direct) {
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->changed, NULL);
        if (pthread_create(&s->io, NULL, io_main, s) != 0) {
            pthread_mutex_destroy(&s->lock);
            pthread_cond_destroy(&s->changed);
            close(s->fd);
            s->fd = -1;
            return sov_fail(SOV_ERR_INTERNAL, "writing %s: cannot start the write thread", path);
        }
        s->io_started = 1;
    }
    return SOV_OK;
}

/* Buffered: starts writeback of the newest window and waits for the one before it, which keeps the disk busy
 * while the caller computes and leaves little for the final fsync. Errors here are not final: fsync reports them. */
static void stream_out(sov_stream *s) {
    if (s->pos - s->begun < WRITEBACK_WINDOW)
        return;
    sync_file_range(s->fd, (off_t)s->begun, (off_t)(s->pos - s->begun), SYNC_FILE_RANGE_WRITE);
    if (s->begun > s->waited) {
        sync_file_range(s->fd, (off_t)s->waited, (off_t)(s->begun - s->waited),
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        s->waited = s->begun;
    }
    s->begun = s->pos;
}

sov_status sov_stream_write(sov_stream *s, const void *data, size_t n) {
    if (!s->direct) {
        SOV_CHECK(sov_write_all(s->fd, data, n, s->path));
        s->pos += n;
        stream_out(s);
        return SOV_OK;
    }
    const uint8_t *p = data;
    while (n > 0) {
        size_t take = SOV_STREAM_BLOCK - s->fill < n ? SOV_STREAM_BLOCK - s->fill : n;
        memcpy(s->buf[s->cur] + s->fill, p, take);
        s->fill += take;
        s->pos += take;
        p += take;
        n -= take;
        if (s->fill == SOV_STREAM_BLOCK)
            SOV_CHECK(hand_over(s, SOV_STREAM_BLOCK));
    }
    /* The disk has nothing to do and a part of a block is waiting: it goes now rather than when the block is full
     * (at the start of a save, and whenever the encoders fall behind the disk) */
    if (s->fill >= SOV_STREAM_EAGER && disk_idle(s))
        SOV_CHECK(hand_over(s, s->fill / SOV_STREAM_ALIGN * SOV_STREAM_ALIGN));
    return SOV_OK;
}

sov_status sov_stream_close(sov_stream *s) {
    sov_status st = SOV_OK;
    if (s->direct) { /* the tail, padded to the alignment, then the file cut to its exact size */
        if (s->fill > 0) {
            size_t padded = (s->fill + SOV_STREAM_ALIGN - 1) / SOV_STREAM_ALIGN * SOV_STREAM_ALIGN;
            memset(s->buf[s->cur] + s->fill, 0, padded - s->fill);
            st = hand_over(s, padded);
        }
        if (st == SOV_OK)
            st = io_idle(s);
        io_stop(s);
        if (st == SOV_OK && ftruncate(s->fd, (off_t)s->pos) != 0)
            st = sov_fail(SOV_ERR_IO, "setting the size of %s: %s", s->path, strerror(errno));
    }
    if (st == SOV_OK && fsync(s->fd) != 0)
        st = sov_fail(SOV_ERR_IO, "fsync %s: %s", s->path, strerror(errno));
    if (close(s->fd) != 0 && st == SOV_OK)
        st = sov_fail(SOV_ERR_IO, "closing %s: %s", s->path, strerror(errno));
    s->fd = -1;
    return st;
}

void sov_stream_discard(sov_stream *s) {
    io_stop(s);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    unlink(s->path);
}
