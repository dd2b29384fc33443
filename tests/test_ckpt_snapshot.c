/* A snapshot that fails part-way (a device-to-host copy that errs, say): the save reports it once, nothing of that
 * step is committed, the previous checkpoint stays latest and the next save works; when the writer of a rank
 * other than 0 never started, that rank still tells rank 0 (rank-<r>.failed), so rank 0 does not wait for it.
 * The copies go through the options' copy_to_host hook, as a GPU job's do. A host state larger than a snapshot block
 * (copied from the back while the encoders read its front) comes back as it was when save returned, though every
 * byte of it is overwritten at once after each save; and the snapshot's two sides, driven directly, never both
 * take a byte, leave none out, and stop reading the state when the copy returns. And the host copy into staging
 * (streaming stores from 1 to 16 MiB) is exact at every size and alignment around its thresholds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sovtrain/ckpt.h>

#include <jansson.h>
#include "copy.h"
#include "fsio.h"
#include "snapshot.h"

#include <pthread.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Larger than one snapshot block (64 MiB), so that the writer starts before the second piece is copied. */
enum { BIG = (64 << 20) / 4 + 1024, SMALL = 1000 };

/* A 1-D tensor of count elements: how these tests hand the writer a flat buffer. */
static sov_ckpt_tensor flat(const char *name, sov_dtype dtype, const void *data, size_t count) {
    return (sov_ckpt_tensor){.name = name, .dtype = dtype, .ndim = 1, .shape = {(int64_t)count}, .data = data};
}

static char dir[256];
static int copies_left; /* copy_to_host fails when this reaches 0; -1: never */

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "%s/sovtrain-ckpt-snap.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sov_remove_dir(dir);
    return 0;
}

static sov_status copy_or_fail(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (copies_left == 0)
        return sov_fail(SOV_ERR_IO, "test copy: the device went away");
    if (copies_left > 0)
        copies_left--;
    memcpy(dst, src, bytes);
    return SOV_OK;
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void failure_after_the_writer_started(void **state) {
    (void)state;
    float *big = calloc(BIG, sizeof *big), *small = calloc(SMALL, sizeof *small);
    assert_non_null(big);
    assert_non_null(small);
    for (int i = 0; i < SMALL; i++)
        small[i] = (float)i;
    sov_ckpt_options o = {.keep = 2, .threads = 2, .commit_timeout_s = 30, .copy_to_host = copy_or_fail};
    sov_ckpt_writer *w;
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    sov_ckpt_tensor ts[2] = {flat("params", SOV_F32, big, BIG), flat("adamw.m", SOV_F32, small, SMALL)};
    sov_ckpt_state s = {.step = 1, .num_tensors = 2, .tensors = ts};
    char path[4200], want[4400];
    copies_left = -1;
    assert_int_equal(sov_ckpt_save(w, &s, 1, NULL, NULL), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);

    s.step = 2; /* the first piece (64 MiB) copies, the writer starts, the second piece fails */
    copies_left = 1;
    assert_int_not_equal(sov_ckpt_save(w, &s, 2, NULL, NULL), SOV_OK);
    assert_non_null(strstr(sov_last_error(), "snapshot"));
    assert_non_null(strstr(sov_last_error(), "the device went away"));
    assert_int_equal(sov_ckpt_wait(w, NULL, 0), SOV_OK); /* reported once, by the save */
    snprintf(want, sizeof want, "%s/step-2", dir);
    assert_false(exists(want));
    char found[4200];
    assert_int_equal(sov_ckpt_find(dir, found, sizeof found, NULL, NULL), SOV_OK);
    assert_string_equal(found, path); /* step 1 stays latest */

    s.step = 3; /* and the next save works */
    copies_left = -1;
    assert_int_equal(sov_ckpt_save(w, &s, 3, NULL, NULL), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
    sov_ckpt_writer_close(w);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_step(c), 3);
    assert_int_equal(sov_ckpt_read(c, "adamw.m", SOV_F32, big), SOV_OK);
    assert_memory_equal(big, small, SMALL * sizeof *small);
    sov_ckpt_close(c);
    free(big);
    free(small);
}

static void failure_before_a_writer_started_is_reported_to_rank_0(void **state) {
    (void)state;
    float *x = calloc(SMALL, sizeof *x);
    assert_non_null(x);
    sov_ckpt_options o = {.keep = 1, .threads = 1, .commit_timeout_s = 30, .copy_to_host = copy_or_fail};
    sov_ckpt_writer *w;
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 1, 2, &o), SOV_OK); /* rank 1 of 2: rank 0 is elsewhere */
    sov_ckpt_tensor ts[1] = {flat("params", SOV_F32, x, SMALL)};
    sov_ckpt_state s = {.step = 5, .num_tensors = 1, .tensors = ts};
    copies_left = 0;
    assert_int_not_equal(sov_ckpt_save(w, &s, 0x55, NULL, NULL), SOV_OK);
    char marker[4400], *text = NULL;
    size_t n = 0;
    snprintf(marker, sizeof marker, "%s/step-5.partial/rank-1.failed", dir);
    assert_int_equal(sov_read_file(marker, 4096, &text, &n), SOV_OK);
    assert_non_null(strstr(text, "0000000000000055")); /* this save's id, then why */
    assert_non_null(strstr(text, "the device went away"));
    free(text);
    sov_ckpt_writer_close(w);
    free(x);
}

/* Three buffers, 68 MiB in all, in small chunks so that the encoders read many of them from the state itself before
 * the copy from the back meets them. The trainer changes its state as soon as save returns: so does this test. */
enum { HOST_F32 = 12 << 20, HOST_BF16 = 10 << 20, HOST_TAIL = 4099 };

static void fill_state(float *a, uint16_t *b, float *c, unsigned seed) {
    for (size_t i = 0; i < HOST_F32; i++)
        a[i] = (float)((i * 2654435761u + seed) % 100003) * 1e-6f - 0.05f;
    for (size_t i = 0; i < HOST_BF16; i++)
        b[i] = (uint16_t)(0x3c00 + (i * 40503u + seed) % 1024);
    for (size_t i = 0; i < HOST_TAIL; i++)
        c[i] = (float)(i + seed);
}

static void host_state_changed_after_save_comes_back_as_saved(void **state) {
    (void)state;
    float *a = malloc(HOST_F32 * sizeof *a), *a0 = malloc(HOST_F32 * sizeof *a), *c = malloc(HOST_TAIL * sizeof *c);
    uint16_t *b = malloc(HOST_BF16 * sizeof *b), *b0 = malloc(HOST_BF16 * sizeof *b);
    float *c0 = malloc(HOST_TAIL * sizeof *c);
    assert_true(a && a0 && b && b0 && c && c0);
    sov_ckpt_options o = {.keep = 1, .threads = 2, .chunk_bytes = 256 << 10, .commit_timeout_s = 60};
    sov_ckpt_writer *w;
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    sov_ckpt_tensor ts[3] = {flat("params", SOV_F32, a, HOST_F32), flat("adamw.m", SOV_BF16, b, HOST_BF16), flat("adamw.v", SOV_F32, c, HOST_TAIL)};
    sov_ckpt_state s = {.num_tensors = 3, .tensors = ts};
    for (unsigned step = 1; step <= 3; step++) {
        fill_state(a, b, c, step);
        memcpy(a0, a, HOST_F32 * sizeof *a);
        memcpy(b0, b, HOST_BF16 * sizeof *b);
        memcpy(c0, c, HOST_TAIL * sizeof *c);
        s.step = step;
        char path[4200];
        assert_int_equal(sov_ckpt_save(w, &s, step, NULL, NULL), SOV_OK);
        memset(a, 0xff, HOST_F32 * sizeof *a); /* the next step's training, at its worst */
        memset(b, 0xff, HOST_BF16 * sizeof *b);
        memset(c, 0xff, HOST_TAIL * sizeof *c);
        assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
        sov_ckpt *ck;
        assert_int_equal(sov_ckpt_open(path, &ck), SOV_OK);
        assert_int_equal(sov_ckpt_read(ck, "params", SOV_F32, a), SOV_OK);
        assert_int_equal(sov_ckpt_read(ck, "adamw.m", SOV_BF16, b), SOV_OK);
        assert_int_equal(sov_ckpt_read(ck, "adamw.v", SOV_F32, c), SOV_OK);
        sov_ckpt_close(ck);
        assert_memory_equal(a, a0, HOST_F32 * sizeof *a);
        assert_memory_equal(b, b0, HOST_BF16 * sizeof *b);
        assert_memory_equal(c, c0, HOST_TAIL * sizeof *c);
    }
    sov_ckpt_writer_close(w);
    free(a), free(a0), free(b), free(b0), free(c), free(c0);
}

/* The snapshot alone: an encoder thread claims chunks in order (reading each from the pieces, a byte at a time so
 * that the copy overtakes it now and then) while this thread copies from the back in small blocks. Afterwards every
 * chunk was either read from the pieces or is final in staging, never both; claimed chunks form a prefix; and once
 * the copy has returned nothing more is claimed. The first chunk is claimed before the copy starts, so that path is
 * taken every time; how far the thread gets beyond it varies from run to run. A third thread waits, as an encoder
 * that could not claim does, for the last chunk, and finds it copied. */
enum { SNAP_BYTES = 3 << 20, SNAP_CHUNK = 4096, SNAP_CHUNKS = SNAP_BYTES / SNAP_CHUNK };

typedef struct claimer {
    sov_snapshot *snap;
    uint8_t read_from_source[SNAP_CHUNKS];
    size_t start; /* the first chunk it claims */
    unsigned sum;
} claimer;

static void *claim_in_order(void *arg) {
    claimer *c = arg;
    for (size_t k = c->start; k < SNAP_CHUNKS; k++) {
        int gather;
        const uint8_t *src = sov_snapshot_claim(c->snap, k * SNAP_CHUNK, (k + 1) * SNAP_CHUNK, &gather);
        if (!src)
            break;
        if (gather)
            sov_snapshot_gather(c->snap, k * SNAP_CHUNK, (k + 1) * SNAP_CHUNK);
        for (size_t i = 0; i < SNAP_CHUNK; i++)
            c->sum += src[i];
        c->read_from_source[k] = 1;
        sov_snapshot_release(c->snap);
    }
    return NULL;
}

/* Waits, like an encoder that could not claim, for the last chunk to be final in staging, then checks it. */
typedef struct waiter {
    sov_snapshot *snap;
    const uint8_t *src;
    int status, equal;
} waiter;

static void *wait_for_last_chunk(void *arg) {
    waiter *wt = arg;
    wt->status = sov_snapshot_final(wt->snap, SNAP_BYTES - SNAP_CHUNK, SNAP_BYTES);
    wt->equal = memcmp(wt->snap->staging + SNAP_BYTES - SNAP_CHUNK, wt->src + SNAP_BYTES - SNAP_CHUNK, SNAP_CHUNK) == 0;
    return NULL;
}

static sov_status copy_plain(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    memcpy(dst, src, bytes);
    return SOV_OK;
}

static void snapshot_sides_meet_without_overlap(void **state) {
    (void)state;
    /* three pieces, apart in memory (adjacent ones would be one piece), each a whole number of chunks */
    uint8_t *mem = malloc(SNAP_BYTES + 2 * SNAP_CHUNK), *src = mem, *staging = malloc(SNAP_BYTES);
    assert_true(mem && staging);
    for (size_t i = 0; i < SNAP_BYTES + 2 * SNAP_CHUNK; i++)
        mem[i] = (uint8_t)(i * 2654435761u >> 11);
    const uint8_t *piece[3] = {mem, mem + SNAP_BYTES / 3 + SNAP_CHUNK, mem + 2 * (SNAP_BYTES / 3) + 2 * SNAP_CHUNK};
    src = malloc(SNAP_BYTES); /* what staging must end up holding */
    memcpy(src, piece[0], SNAP_BYTES / 3);
    memcpy(src + SNAP_BYTES / 3, piece[1], SNAP_BYTES / 3);
    memcpy(src + 2 * (SNAP_BYTES / 3), piece[2], SNAP_BYTES - 2 * (SNAP_BYTES / 3));
    sov_snapshot snap;
    sov_snapshot_init(&snap);
    for (int round = 0; round < 20; round++) {
        memset(staging, 0, SNAP_BYTES);
        sov_snapshot_begin(&snap, staging, SNAP_BYTES, 1);
        assert_int_equal(sov_snapshot_add(&snap, piece[0], SNAP_BYTES / 3), SOV_OK);
        assert_int_equal(sov_snapshot_add(&snap, piece[1], SNAP_BYTES / 3), SOV_OK);
        assert_int_equal(sov_snapshot_add(&snap, piece[2], SNAP_BYTES - 2 * (SNAP_BYTES / 3)), SOV_OK);
        assert_int_equal(snap.npieces, 3);
        claimer *c = calloc(1, sizeof *c);
        c->snap = &snap;
        int gather;
        const uint8_t *first = sov_snapshot_claim(&snap, 0, SNAP_CHUNK, &gather); /* one claim, before the copy */
        assert_ptr_equal(first, piece[0]);
        assert_false(gather);
        sov_snapshot_release(&snap);
        c->read_from_source[0] = 1;
        c->start = 1;
        waiter wt = {.snap = &snap, .src = src, .status = -1};
        pthread_t t, tw;
        assert_int_equal(pthread_create(&tw, NULL, wait_for_last_chunk, &wt), 0);
        assert_int_equal(pthread_create(&t, NULL, claim_in_order, c), 0);
        /* blocks off chunk edges; every other round one block as large as the state, so that the steps halve */
        sov_snapshot_copy_backward(&snap, copy_plain, NULL, round % 2 ? SNAP_BYTES : 5 * SNAP_CHUNK + 100 * round);
        assert_int_equal(snap.open, 0); /* closed: no claim from here on */
        assert_int_equal(snap.copied_from, snap.claimed);
        assert_int_equal(sov_snapshot_wait_done(&snap), SOV_OK);
        assert_int_equal(snap.readers, 0);
        pthread_join(t, NULL);
        pthread_join(tw, NULL);
        assert_int_equal(wt.status, SOV_OK);
        assert_true(wt.equal);
        size_t prefix = snap.claimed;
        assert_int_equal(prefix % SNAP_CHUNK, 0);
        for (size_t k = 0; k < SNAP_CHUNKS; k++) {
            int claimed = k * SNAP_CHUNK < prefix;
            assert_int_equal(c->read_from_source[k], claimed);
            for (size_t i = k * SNAP_CHUNK; i < (k + 1) * SNAP_CHUNK; i++) /* copied exactly where not claimed */
                assert_int_equal(staging[i], claimed ? 0 : src[i]);
        }
        free(c);
    }
    sov_snapshot_destroy(&snap);
    free(mem);
    free(src);
    free(staging);
}

/* A state larger than a snapshot block, its front many small tensors that share chunks: the encoders take those
 * chunks from the tensors themselves (each gathering its chunk's pieces into staging) while the caller copies the
 * big tensor from the back. Every tensor comes back bitwise, save after save. */
static void small_tensors_of_a_large_state(void **state) {
    (void)state;
    enum { SMALL_N = 3000, SMALL_ELEMS = 1531, BIG_ELEMS = 72 << 18 }; /* 18 MB of small ones, 72 MiB */
    static char names[SMALL_N][16];
    sov_ckpt_tensor *t = calloc(SMALL_N + 1, sizeof *t);
    float **data = calloc(SMALL_N + 1, sizeof *data);
    for (int i = 0; i <= SMALL_N; i++) {
        size_t n = i < SMALL_N ? SMALL_ELEMS : BIG_ELEMS;
        data[i] = malloc(n * sizeof(float));
        for (size_t e = 0; e < n; e++)
            data[i][e] = (float)(i * 7 + (int)(e % 1000)) * 0.001f;
        if (i < SMALL_N)
            snprintf(names[i], sizeof names[i], "s%d", i);
        t[i] = flat(i < SMALL_N ? names[i] : "big", SOV_F32, data[i], n);
    }
    sov_ckpt_state s = {.num_tensors = SMALL_N + 1, .tensors = t};
    sov_ckpt_options o = {.keep = 1, .threads = 2, .commit_timeout_s = 30};
    sov_ckpt_writer *w;
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    char path[4200];
    float *back = malloc(BIG_ELEMS * sizeof *back);
    for (int save = 0; save < 2; save++) {
        s.step = 300 + save;
        assert_int_equal(sov_ckpt_save(w, &s, 300 + (uint64_t)save, NULL, NULL), SOV_OK);
        assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
        sov_ckpt *ck;
        assert_int_equal(sov_ckpt_open(path, &ck), SOV_OK);
        for (int i = 0; i <= SMALL_N; i += i < SMALL_N - 1 ? 97 : 1) { /* a spread of the small ones, and the big */
            assert_int_equal(sov_ckpt_read(ck, t[i].name, SOV_F32, back), SOV_OK);
            assert_memory_equal(back, data[i], (size_t)t[i].shape[0] * sizeof(float));
        }
        sov_ckpt_close(ck);
    }
    sov_ckpt_writer_close(w);
    for (int i = 0; i <= SMALL_N; i++)
        free(data[i]);
    free(data), free(t), free(back);
}

/* Sizes across the streaming threshold (1 MiB) and around the streamed body's 16 KiB groups, destinations at every
 * kind of misalignment: each copy equals its source and leaves the bytes around it alone. */
static void staging_copy_is_exact(void **state) {
    (void)state;
    const size_t sizes[] = {0, 1, 127, (1 << 20) - 1, 1 << 20, (1 << 20) + 77, (1 << 20) + 16383,
                            (1 << 20) + 16384 + 64, (3 << 20) + 5, (16 << 20) - 1, 16 << 20, (20 << 20) + 4099};
    const size_t dst_at[] = {0, 1, 2, 48, 63, 64, 100}, src_at[] = {0, 3};
    size_t cap = (20 << 20) + 4352;
    uint8_t *src = malloc(cap), *dst = aligned_alloc(64, cap); /* so that offset 0 is a 64-byte aligned start */
    assert_non_null(src);
    assert_non_null(dst);
    for (size_t i = 0; i < cap; i++)
        src[i] = (uint8_t)(i * 2654435761u >> 13);
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++)
        for (size_t b = 0; b < sizeof dst_at / sizeof dst_at[0]; b++)
            for (size_t c = 0; c < sizeof src_at / sizeof src_at[0]; c++) {
                size_t n = sizes[a], d = dst_at[b], s = src_at[c];
                memset(dst, 0xa5, n + d + 128);
                sov_copy_to_staging(dst + d, src + s, n);
                assert_memory_equal(dst + d, src + s, n);
                for (size_t i = 0; i < d; i++)
                    assert_int_equal(dst[i], 0xa5);
                for (size_t i = d + n; i < d + n + 128; i++)
                    assert_int_equal(dst[i], 0xa5);
            }
    free(src);
    free(dst);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(failure_after_the_writer_started),
        cmocka_unit_test(failure_before_a_writer_started_is_reported_to_rank_0),
        cmocka_unit_test(host_state_changed_after_save_comes_back_as_saved),
        cmocka_unit_test(snapshot_sides_meet_without_overlap),
        cmocka_unit_test(small_tensors_of_a_large_state),
        cmocka_unit_test(staging_copy_is_exact),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
