/* Checkpoint round trip through the public API, one rank: f32 and bf16 buffers of sizes that end mid-chunk and
 * mid-alignment-block come back bitwise (through O_DIRECT files where the filesystem allows them, buffered
 * otherwise: SOVTRAIN_CKPT_DIRECT=0 runs the second path), and a buffer read as the wrong dtype is refused; the
 * encoder pipeline survives hundreds of tiny chunks; a write the system refuses (the file-size limit) fails the
 * save with the reason and leaves the previous checkpoint the latest; format versions 1 and 2 are read, others
 * refused as unsupported. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "ckpt.h"
#include "fsio.h"
#include "rng.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

enum { NF = 300007, NB = 200003 }; /* odd counts: chunks and the last 4 KiB block end part-way */

static char dir[256];

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "%s/sovtrain-ckpt-rt.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void fill(float *f, uint16_t *h) {
    sov_rng rng;
    sov_rng_seed(&rng, 3, 0);
    for (int i = 0; i < NF; i++)
        f[i] = (sov_rng_uniform(&rng) - 0.5f) * 0.04f;
    for (int i = 0; i < NB; i++)
        h[i] = (uint16_t)(sov_rng_below(&rng, 1u << 16));
}

static void round_trip_chunks(int direct, size_t chunk_bytes, long step) {
    setenv("SOVTRAIN_CKPT_DIRECT", direct ? "1" : "0", 1);
    float *f = malloc(NF * sizeof *f), *f2 = malloc(NF * sizeof *f2);
    uint16_t *h = malloc(NB * sizeof *h), *h2 = malloc(NB * sizeof *h2);
    fill(f, h);
    sov_ckpt_writer *w;
    sov_ckpt_options o = {.keep = 1, .threads = 2, .chunk_bytes = chunk_bytes, .commit_timeout_s = 30};
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    sov_ckpt_state s = {.step = step, .num_buffers = 2};
    s.buffers[0] = (sov_ckpt_buffer){"params", f, NF, SOV_CKPT_F32};
    s.buffers[1] = (sov_ckpt_buffer){"weights.bf16", h, NB, SOV_CKPT_BF16};
    char path[4200];
    assert_int_equal(sov_ckpt_save(w, &s, 7 + (uint64_t)step, NULL, NULL), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
    sov_ckpt_writer_close(w);

    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_verify(c), SOV_OK);
    assert_int_equal(sov_ckpt_read_buffer(c, "params", SOV_CKPT_F32, f2, NF), SOV_OK);
    assert_memory_equal(f, f2, NF * sizeof *f);
    assert_int_equal(sov_ckpt_read_buffer(c, "weights.bf16", SOV_CKPT_BF16, h2, NB), SOV_OK);
    assert_memory_equal(h, h2, NB * sizeof *h);
    /* the wrong dtype is refused, naming both */
    assert_int_equal(sov_ckpt_read_buffer(c, "weights.bf16", SOV_CKPT_F32, f2, NB), SOV_ERR_INVALID);
    assert_non_null(strstr(sov_last_error(), "bf16"));
    assert_non_null(strstr(sov_last_error(), "f32 expected"));
    sov_ckpt_close(c);
    free(f), free(f2), free(h), free(h2);
}

static void direct_files(void **state) {
    (void)state;
    round_trip_chunks(1, 64 << 10, 1);
}

static void buffered_files(void **state) {
    (void)state;
    round_trip_chunks(0, 64 << 10, 2);
}

/* Hundreds of 4 KiB chunks through the encoder pipeline's few slots, many times: an encoder must never take a
 * slot whose previous chunk is still being encoded or not yet written (a race that once hung the writer). */
static void many_small_chunks(void **state) {
    (void)state;
    for (long step = 3; step < 23; step++)
        round_trip_chunks((int)(step & 1), 4096, step);
}

/* The write helper's failure path (direct files) and the buffered one: with the file-size limit below the data
 * file's size, the save fails naming the file and the cause, nothing hangs, and the checkpoint before it stays. */
static void refused_writes_fail_the_save(void **state) {
    (void)state;
    for (int direct = 1; direct >= 0; direct--) {
        long good = direct ? 50 : 70; /* each newer than everything before it */
        round_trip_chunks(direct, 64 << 10, good); /* the previous checkpoint */
        float *f = malloc(NF * sizeof *f);
        uint16_t *h = malloc(NB * sizeof *h);
        fill(f, h);
        sov_ckpt_writer *w;
        sov_ckpt_options o = {.keep = 2, .threads = 2, .chunk_bytes = 64 << 10, .commit_timeout_s = 30};
        assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
        sov_ckpt_state s = {.step = good + 10, .num_buffers = 2};
        s.buffers[0] = (sov_ckpt_buffer){"params", f, NF, SOV_CKPT_F32};
        s.buffers[1] = (sov_ckpt_buffer){"weights.bf16", h, NB, SOV_CKPT_BF16};
        struct rlimit old, small;
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
        small = old;
        small.rlim_cur = 256 << 10; /* the data file is ~1.4 MB */
        signal(SIGXFSZ, SIG_IGN);   /* so that a write past the limit fails with EFBIG instead of killing us */
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
        assert_int_equal(sov_ckpt_save(w, &s, 90 + (uint64_t)direct, NULL, NULL), SOV_OK);
        sov_status st = sov_ckpt_wait(w, NULL, 0);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
        assert_int_not_equal(st, SOV_OK);
        assert_non_null(strstr(sov_last_error(), "rank-0.bin"));
        assert_non_null(strstr(sov_last_error(), strerror(EFBIG)));
        sov_ckpt_writer_close(w);
        char latest[4200];
        assert_int_equal(sov_ckpt_find(dir, latest, sizeof latest, NULL, NULL), SOV_OK);
        char want[300];
        snprintf(want, sizeof want, "step-%ld", good);
        assert_non_null(strstr(latest, want));
        free(f), free(h);
    }
}

/* The manifest of the checkpoint at path rewritten with another format_version, and sealed again. */
static void set_version(const char *path, int from, int to) {
    char file[4300], *text, key[64];
    size_t n;
    snprintf(file, sizeof file, "%s/manifest.json", path);
    assert_int_equal(sov_read_file(file, 1 << 20, &text, &n), SOV_OK);
    snprintf(key, sizeof key, "\"format_version\": %d,", from);
    char *at = strstr(text, key);
    assert_non_null(at);
    at[strlen(key) - 2] = (char)('0' + to);
    assert_int_equal(sov_manifest_seal(text, n), SOV_OK);
    assert_int_equal(sov_write_file_atomic(path, "manifest.json", text, n), SOV_OK);
    free(text);
}

/* sovtrain writes version 2 (which added plane coding 2) and still reads version 1; 0 and 3 are refused as
 * unsupported, not as damage, naming the versions it reads. */
static void format_versions(void **state) {
    (void)state;
    round_trip_chunks(1, 64 << 10, 40);
    char path[4200];
    snprintf(path, sizeof path, "%s/step-40", dir);
    sov_ckpt *c;
    set_version(path, SOV_CKPT_FORMAT_VERSION, 1);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    sov_ckpt_close(c);
    set_version(path, 1, 3);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_ERR_UNSUPPORTED);
    assert_non_null(strstr(sov_last_error(), "reads versions 1 to 2"));
    set_version(path, 3, 0);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_ERR_UNSUPPORTED);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(direct_files),
        cmocka_unit_test(buffered_files),
        cmocka_unit_test(many_small_chunks),
        cmocka_unit_test(refused_writes_fail_the_save),
        cmocka_unit_test(format_versions),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
