/* stream.c: see stream.h. */
#include "stream.h"
#include "fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITEBACK_WINDOW ((uint64_t)16 << 20)

static int direct_wanted(void) {
    const char *e = getenv("SOVTRAIN_CKPT_DIRECT");
    return !(e && strcmp(e, "0") == 0);
}

/* One aligned span to the disk at offset. A short write that keeps the alignment goes on; one that does not
 * cannot (O_DIRECT needs aligned offsets): the device refused more, which is a full disk in practice. */
static sov_status write_direct(int fd, const char *path, const uint8_t *span, size_t n, uint64_t offset) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(fd, span + done, n - done, (off_t)(offset + done));
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

/* Buffered: starts writeback of the newest window and waits for the one before it, which keeps the disk busy
 * while the caller computes and leaves little for the final fsync. A writeback error must fail the save here:
 * waiting on the range consumes it, and the final fsync would not see it again. */
static sov_status stream_out(sov_stream *s) {
    if (s->pos - s->begun < WRITEBACK_WINDOW)
        return SOV_OK;
    if (sync_file_range(s->fd, (off_t)s->begun, (off_t)(s->pos - s->begun), SYNC_FILE_RANGE_WRITE) != 0 ||
        (s->begun > s->waited &&
         sync_file_range(s->fd, (off_t)s->waited, (off_t)(s->begun - s->waited),
                         SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0))
        return sov_fail(SOV_ERR_IO, "writing %s back to the disk: %s", s->path, strerror(errno));
    s->waited = s->begun;
    s->begun = s->pos;
    return SOV_OK;
}

sov_status sov_stream_open(sov_stream *s, const char *path) {
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    s->fd = -1;
    if (direct_wanted()) {
        s->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0644);
        s->direct = s->fd >= 0;
    }
    if (s->fd < 0) /* EINVAL: this filesystem has no O_DIRECT; any other error repeats below with its message */
        s->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s->fd < 0)
        return sov_fail(SOV_ERR_IO, "creating %s: %s", path, strerror(errno));
    return SOV_OK;
}

sov_status sov_stream_append(sov_stream *s, uint8_t *record, size_t n, uint64_t *offset) {
    size_t padded = sov_stream_padded(n);
    memset(record + n, 0, padded - n);
    if (s->direct)
        SOV_CHECK(write_direct(s->fd, s->path, record, padded, s->pos));
    else
        SOV_CHECK(sov_write_all(s->fd, record, padded, s->path));
    *offset = s->pos;
    s->end = s->pos + n;
    s->pos += padded;
    return s->direct ? SOV_OK : stream_out(s);
}

sov_status sov_stream_close(sov_stream *s) {
    sov_status st = SOV_OK;
    if (ftruncate(s->fd, (off_t)s->end) != 0) /* the last record's padding goes */
        st = sov_fail(SOV_ERR_IO, "setting the size of %s: %s", s->path, strerror(errno));
    if (st == SOV_OK && fsync(s->fd) != 0)
        st = sov_fail(SOV_ERR_IO, "fsync %s: %s", s->path, strerror(errno));
    if (close(s->fd) != 0 && st == SOV_OK)
        st = sov_fail(SOV_ERR_IO, "closing %s: %s", s->path, strerror(errno));
    s->fd = -1;
    return st;
}

void sov_stream_discard(sov_stream *s) {
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    unlink(s->path);
}
