/* Checkpoint round trip through the public API, one rank: f32 and bf16 tensors of sizes that end mid-chunk and
 * mid-alignment-block come back bitwise (through O_DIRECT files where the filesystem allows them, buffered
 * otherwise: SOVTRAIN_CKPT_DIRECT=0 runs the second path), and a tensor read as the wrong dtype is refused; the
 * encoder pipeline survives hundreds of tiny chunks; a write the system refuses (the file-size limit) fails the
 * save with the reason and leaves the previous checkpoint the latest; a format-3 checkpoint written by an earlier
 * sovtrain (tests/fixtures), and the same laid out as formats 1 and 2, are read, others refused as unsupported; a data file's layout and its padding are checked; reads of growing chunk sizes through one
 * open checkpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sovtrain/ckpt.h>

#include <jansson.h>
#include "fsio.h"
#include "rng.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
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

/* A 1-D tensor of count elements: how these tests hand the writer a flat buffer. */
static sov_ckpt_tensor flat(const char *name, sov_dtype dtype, const void *data, size_t count) {
    return (sov_ckpt_tensor){.name = name, .dtype = dtype, .ndim = 1, .shape = {(int64_t)count}, .data = data};
}

/* Opens, verifies and reads back the checkpoint that round_trip_chunks wrote at path; a buffer read as the wrong
 * dtype is refused, naming both. */
static void check_reads_back(const char *path) {
    float *f = malloc(NF * sizeof *f), *f2 = malloc(NF * sizeof *f2);
    uint16_t *h = malloc(NB * sizeof *h), *h2 = malloc(NB * sizeof *h2);
    fill(f, h);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_verify(c), SOV_OK);
    assert_int_equal(sov_ckpt_read(c, "params", SOV_F32, f2), SOV_OK);
    assert_memory_equal(f, f2, NF * sizeof *f);
    assert_int_equal(sov_ckpt_read(c, "weights.bf16", SOV_BF16, h2), SOV_OK);
    assert_memory_equal(h, h2, NB * sizeof *h);
    assert_int_equal(sov_ckpt_read(c, "weights.bf16", SOV_F32, f2), SOV_ERR_INVALID);
    assert_non_null(strstr(sov_last_error(), "holds bf16 elements, not f32"));
    assert_int_equal(sov_ckpt_read(c, "params", SOV_F32, NULL), SOV_ERR_INVALID); /* no memory */
    assert_non_null(strstr(sov_last_error(), "no memory given"));
    sov_ckpt_close(c);
    free(f), free(f2), free(h), free(h2);
}

static void round_trip_chunks(int direct, size_t chunk_bytes, long step) {
    setenv("SOVTRAIN_CKPT_DIRECT", direct ? "1" : "0", 1);
    float *f = malloc(NF * sizeof *f);
    uint16_t *h = malloc(NB * sizeof *h);
    fill(f, h);
    sov_ckpt_writer *w;
    sov_ckpt_options o = {.keep = 1, .threads = 2, .chunk_bytes = chunk_bytes, .commit_timeout_s = 30};
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    sov_ckpt_tensor ts[2] = {flat("params", SOV_F32, f, NF), flat("weights.bf16", SOV_BF16, h, NB)};
    sov_ckpt_state s = {.step = step, .num_tensors = 2, .tensors = ts};
    char path[4200];
    assert_int_equal(sov_ckpt_save(w, &s, 7 + (uint64_t)step, NULL, NULL), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
    sov_ckpt_writer_close(w);
    check_reads_back(path);
    free(f), free(h);
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

/* The direct write path's failure (O_DIRECT files) and the buffered one's: with the file-size limit below the data
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
        sov_ckpt_tensor ts[2] = {flat("params", SOV_F32, f, NF), flat("weights.bf16", SOV_BF16, h, NB)};
        sov_ckpt_state s = {.step = good + 10, .num_tensors = 2, .tensors = ts};
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
        char failed[4300];
        snprintf(failed, sizeof failed, "%s/step-%ld.partial/rank-0.bin", dir, good + 10);
        assert_int_not_equal(access(failed, F_OK), 0); /* the failed data file is gone: its space is back */
        char latest[4200];
        assert_int_equal(sov_ckpt_find(dir, latest, sizeof latest, NULL, NULL), SOV_OK);
        char want[300];
        snprintf(want, sizeof want, "step-%ld", good);
        assert_non_null(strstr(latest, want));
        free(f), free(h);
    }
}

/* The manifest of the checkpoint at path, parsed. */
static json_t *load_manifest(const char *path) {
    char file[4300];
    snprintf(file, sizeof file, "%s/manifest.json", path);
    json_t *m = json_load_file(file, 0, NULL);
    assert_non_null(m);
    return m;
}

/* m written as the checkpoint's manifest, sealed (as a writer of that version would have). */
static void store_manifest(const char *path, json_t *m) {
    char *text = json_dumps(m, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    assert_non_null(text);
    assert_int_equal(sov_manifest_seal(text, strlen(text)), SOV_OK);
    assert_int_equal(sov_write_file_atomic(path, "manifest.json", text, strlen(text)), SOV_OK);
    free(text);
}

static void set_version(const char *path, int version) {
    json_t *m = load_manifest(path);
    json_object_set_new(m, "format_version", json_integer(version));
    store_manifest(path, m);
    json_decref(m);
}

static int by_file_offset(const void *a, const void *b) {
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "file_offset")),
               y = json_integer_value(json_object_get(*(json_t *const *)b, "file_offset"));
    return x < y ? -1 : x > y;
}

/* Rewrites the one-rank checkpoint at path as a version-1 or -2 writer laid it out: the chunks of rank-0.bin back
 * to back, with no padding between them. */
static void compact_to_version(const char *path, int version) {
    json_t *m = load_manifest(path), *file = json_array_get(json_object_get(m, "files"), 0),
           *chunks = json_object_get(file, "chunks");
    size_t n = json_array_size(chunks), i;
    json_t **order = malloc(n * sizeof *order);
    for (i = 0; i < n; i++)
        order[i] = json_array_get(chunks, i);
    qsort(order, n, sizeof *order, by_file_offset);
    char bin[4300], *data;
    size_t bytes, at = 0;
    snprintf(bin, sizeof bin, "%s/rank-0.bin", path);
    assert_int_equal(sov_read_file(bin, 64 << 20, &data, &bytes), SOV_OK);
    for (i = 0; i < n; i++) {
        size_t from = (size_t)json_integer_value(json_object_get(order[i], "file_offset")),
               len = (size_t)json_integer_value(json_object_get(order[i], "bytes"));
        assert_true(i == 0 || from > at); /* version 3 left a gap here: the test shows something */
        memmove(data + at, data + from, len);
        json_object_set_new(order[i], "file_offset", json_integer((json_int_t)at));
        at += len;
    }
    json_object_set_new(file, "bytes", json_integer((json_int_t)at));
    assert_int_equal(sov_write_file_atomic(path, "rank-0.bin", data, at), SOV_OK);
    json_object_set_new(m, "format_version", json_integer(version));
    store_manifest(path, m);
    json_decref(m);
    free(order);
    free(data);
}

/* The format-3 checkpoint kept in tests/fixtures (written by sovtrain at format 3: a 784-4-10 MLP after 6 AdamW
 * steps), copied to `to`. */
static void copy_fixture(const char *to) {
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s/ckpt-v3/step-6' '%s'", to, SOV_FIXTURES, to);
    assert_int_equal(system(cmd), 0);
}

/* Its tensors, as the format-3 writer's own export has them (safetensors, F32): read back bitwise, each 1-D optimizer
 * buffer as a tensor of its name. */
static void check_fixture_reads(const char *path) {
    static const struct {
        const char *name;
        int64_t rows, cols;
    } want[] = {{"layers.0.weight", 4, 784}, {"layers.0.bias", 4, 1}, {"layers.1.weight", 10, 4},
                {"layers.1.bias", 10, 1}};
    char st[4200];
    snprintf(st, sizeof st, "%s/ckpt-v3/step-6.safetensors", SOV_FIXTURES);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_verify(c), SOV_OK);
    assert_int_equal(sov_ckpt_num_tensors(c), 6);
    static float a[3190], b[3190];
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int64_t shape[2] = {want[i].rows, want[i].cols};
        int ndim = want[i].cols > 1 ? 2 : 1;
        assert_int_equal(sov_safetensors_read(st, want[i].name, SOV_F32, ndim, shape, a), SOV_OK);
        assert_int_equal(sov_ckpt_read(c, want[i].name, SOV_F32, b), SOV_OK);
        assert_memory_equal(a, b, (size_t)(shape[0] * shape[1]) * sizeof *a);
    }
    sov_ckpt_tensor_info info;
    assert_int_equal(sov_ckpt_tensor_find(c, "adamw.v", &info), SOV_OK);
    assert_int_equal(info.ndim, 1);
    assert_int_equal(info.shape[0], 3190);
    assert_int_equal(sov_ckpt_read(c, "adamw.v", SOV_F32, a), SOV_OK);
    for (int i = 0; i < 3190; i++)
        assert_true(a[i] >= 0.0f); /* a second moment */
    sov_ckpt_close(c);
}

/* sovtrain writes versions 4 and 5 (encrypted) and still reads versions 1 to 3: a format-3 checkpoint written by
 * the sovtrain of then, and the same laid out as versions 1 and 2 wrote it (chunks back to back; 2 added plane
 * coding 2). A version-3 file read under an older version's rules is refused for its layout, and versions 0 and 6
 * are refused as unsupported, not as damage, naming the versions it reads. */
static void format_versions(void **state) {
    (void)state;
    char path[4200];
    sov_ckpt *c;
    snprintf(path, sizeof path, "%s/step-6", dir);
    copy_fixture(path);
    check_fixture_reads(path);
    set_version(path, 2);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_ERR_FORMAT);
    assert_non_null(strstr(sov_last_error(), "do not lie where the format puts them"));
    set_version(path, 6);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_ERR_UNSUPPORTED);
    assert_non_null(strstr(sov_last_error(), "reads versions 1 to 5"));
    set_version(path, 0);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_ERR_UNSUPPORTED);
    for (int version = 1; version <= 2; version++) {
        copy_fixture(path);
        compact_to_version(path, version);
        check_fixture_reads(path);
    }
}

/* Two ranks where rank 0 owns no element (the state is one element): its data file is empty, with no chunks, and
 * the checkpoint verifies and reads back. Both writers run in this process, as two ranks would. */
static void a_rank_with_no_chunks(void **state) {
    (void)state;
    float one = 1.5f, back = 0;
    sov_ckpt_writer *w[2];
    sov_ckpt_options o = {.keep = 1, .threads = 1, .chunk_bytes = 64 << 10, .commit_timeout_s = 30};
    sov_ckpt_tensor ts[1] = {flat("params", SOV_F32, &one, 1)};
    sov_ckpt_state s = {.step = 80, .num_tensors = 1, .tensors = ts};
    for (int r = 1; r >= 0; r--) {
        assert_int_equal(sov_ckpt_writer_open(&w[r], dir, r, 2, &o), SOV_OK);
        assert_int_equal(sov_ckpt_save(w[r], &s, 99, NULL, NULL), SOV_OK);
    }
    char path[4200], bin[4300];
    assert_int_equal(sov_ckpt_wait(w[1], NULL, 0), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w[0], path, sizeof path), SOV_OK);
    sov_ckpt_writer_close(w[0]);
    sov_ckpt_writer_close(w[1]);
    snprintf(bin, sizeof bin, "%s/rank-0.bin", path);
    struct stat sb;
    assert_int_equal(stat(bin, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_verify(c), SOV_OK);
    assert_int_equal(sov_ckpt_read(c, "params", SOV_F32, &back), SOV_OK);
    assert_true(back == one);
    sov_ckpt_close(c);
}

/* One open checkpoint read buffer by buffer, smallest first (the tiny tensor is i32, so it has a buffer, and a
 * chunk, of its own): the reader sizes its codecs and buffers by the chunks of each read, so the big buffer's read
 * must make them anew and bigger, and a verify after it (into scratch) and a small read again must still work. */
static void reads_of_growing_chunks(void **state) {
    (void)state;
    float tiny[10], tiny_back[10] = {0}, *big = malloc(NF * sizeof *big), *big_back = calloc(NF, sizeof *big);
    uint16_t *unused = malloc(NB * sizeof *unused);
    fill(big, unused);
    for (int i = 0; i < 10; i++)
        tiny[i] = (float)i / 3.0f;
    sov_ckpt_writer *w;
    sov_ckpt_options o = {.keep = 1, .threads = 2, .chunk_bytes = 64 << 10, .commit_timeout_s = 30};
    sov_ckpt_tensor ts[2] = {flat("tiny", SOV_I32, tiny, 10), flat("big", SOV_F32, big, NF)};
    sov_ckpt_state s = {.step = 81, .num_tensors = 2, .tensors = ts};
    char path[4200];
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    assert_int_equal(sov_ckpt_save(w, &s, 100, NULL, NULL), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
    sov_ckpt_writer_close(w);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_read(c, "tiny", SOV_I32, tiny_back), SOV_OK);
    assert_memory_equal(tiny, tiny_back, sizeof tiny);
    assert_int_equal(sov_ckpt_read(c, "big", SOV_F32, big_back), SOV_OK);
    assert_memory_equal(big, big_back, NF * sizeof *big);
    assert_int_equal(sov_ckpt_verify(c), SOV_OK);
    memset(tiny_back, 0, sizeof tiny_back);
    assert_int_equal(sov_ckpt_read(c, "tiny", SOV_I32, tiny_back), SOV_OK);
    assert_memory_equal(tiny, tiny_back, sizeof tiny);
    sov_ckpt_close(c);
    free(big), free(big_back), free(unused);
}

/* The file's first chunk, and where its padding (the zeros up to the next chunk) is. */
static void first_padding(const char *path, size_t *pad_at, size_t *pad_len) {
    json_t *m = load_manifest(path), *chunks = json_object_get(json_array_get(json_object_get(m, "files"), 0), "chunks");
    size_t n = json_array_size(chunks), end = (size_t)-1, next = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        json_t *ch = json_array_get(chunks, i);
        size_t at = (size_t)json_integer_value(json_object_get(ch, "file_offset"));
        if (at == 0)
            end = (size_t)json_integer_value(json_object_get(ch, "bytes"));
        else if (at < next)
            next = at;
    }
    json_decref(m);
    assert_true(end != (size_t)-1 && next != (size_t)-1 && next > end && next % 4096 == 0);
    *pad_at = end;
    *pad_len = next - end;
}

/* A byte of padding set: verify and a restore both refuse the file, naming the padding and the byte; the layout
 * itself is checked when the checkpoint is opened, before anything is read. */
static void padding_and_layout_are_checked(void **state) {
    (void)state;
    char path[4200], bin[4300];
    round_trip_chunks(1, 64 << 10, 60);
    snprintf(path, sizeof path, "%s/step-60", dir);
    snprintf(bin, sizeof bin, "%s/rank-0.bin", path);
    size_t pad_at, pad_len;
    first_padding(path, &pad_at, &pad_len);
    FILE *fp = fopen(bin, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, (long)(pad_at + pad_len - 1), SEEK_SET), 0);
    assert_int_equal(fputc(0x40, fp), 0x40);
    assert_int_equal(fclose(fp), 0);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_int_equal(sov_ckpt_verify(c), SOV_ERR_FORMAT);
    assert_non_null(strstr(sov_last_error(), "padding after it are not all zero"));
    char byte[64];
    snprintf(byte, sizeof byte, "byte %zu is damaged", pad_at + pad_len - 1);
    assert_non_null(strstr(sov_last_error(), byte));
    float *f = malloc(NF * sizeof *f);
    assert_int_equal(sov_ckpt_read(c, "params", SOV_F32, f), SOV_ERR_FORMAT);
    free(f);
    sov_ckpt_close(c);

    /* a chunk moved off its aligned place (the file's size moved with it): refused at open */
    round_trip_chunks(1, 64 << 10, 61);
    snprintf(path, sizeof path, "%s/step-61", dir);
    json_t *m = load_manifest(path), *file = json_array_get(json_object_get(m, "files"), 0),
           *last = json_array_get(json_object_get(file, "chunks"), json_array_size(json_object_get(file, "chunks")) - 1);
    json_object_set_new(last, "file_offset", json_integer(json_integer_value(json_object_get(last, "file_offset")) + 8));
    json_object_set_new(file, "bytes", json_integer(json_integer_value(json_object_get(file, "bytes")) + 8));
    store_manifest(path, m);
    json_decref(m);
    assert_int_equal(sov_ckpt_open(path, &c), SOV_ERR_FORMAT);
    assert_non_null(strstr(sov_last_error(), "do not lie where the format puts them"));
}

/* Metadata given after the data (torch's DCP): nothing is visible before it comes; a writer closed without it
 * fails the save and the checkpoint before stays the latest. */
static void metadata_after_the_data(void **state) {
    (void)state;
    float f[1000];
    for (int i = 0; i < 1000; i++)
        f[i] = (float)i;
    sov_ckpt_options o = {.keep = 3, .threads = 2, .commit_timeout_s = 30};
    sov_ckpt_tensor t = flat("w", SOV_F32, f, 1000);
    sov_ckpt_state s = {.step = 90, .num_tensors = 1, .tensors = &t, .meta_json = "{\"early\": 1}"};
    sov_ckpt_writer *w;
    char path[4200], stray[4300];
    assert_int_equal(sov_ckpt_writer_open(&w, dir, 0, 1, &o), SOV_OK);
    assert_int_equal(sov_ckpt_commit_meta(w, "{}"), SOV_ERR_INVALID); /* no deferred save in flight */
    assert_int_equal(sov_ckpt_defer_meta(w), SOV_OK);
    assert_int_equal(sov_ckpt_save(w, &s, 901, NULL, NULL), SOV_OK);
    assert_int_equal(sov_ckpt_defer_meta(w), SOV_ERR_INVALID); /* a save is in flight */
    snprintf(stray, sizeof stray, "%s/step-90/manifest.json", dir);
    assert_int_not_equal(access(stray, F_OK), 0); /* not committed: waiting for the metadata */
    assert_int_equal(sov_ckpt_commit_meta(w, "[1, 2]"), SOV_ERR_INVALID);
    assert_non_null(strstr(sov_last_error(), "not a JSON object"));
    assert_int_equal(sov_ckpt_commit_meta(w, "{\"late\": {\"x\": [1, 2]}}"), SOV_OK);
    assert_int_equal(sov_ckpt_wait(w, path, sizeof path), SOV_OK);
    sov_ckpt *c;
    assert_int_equal(sov_ckpt_open(path, &c), SOV_OK);
    assert_string_equal(sov_ckpt_meta_json(c), "{\"late\":{\"x\":[1,2]}}");
    sov_ckpt_close(c);

    /* closed while the commit waits: the save fails, step 90 stays the latest */
    s.step = 91;
    assert_int_equal(sov_ckpt_defer_meta(w), SOV_OK);
    assert_int_equal(sov_ckpt_save(w, &s, 911, NULL, NULL), SOV_OK);
    sov_ckpt_writer_close(w);
    snprintf(stray, sizeof stray, "%s/step-91/manifest.json", dir);
    assert_int_not_equal(access(stray, F_OK), 0);
    assert_int_equal(sov_ckpt_find(dir, path, sizeof path, NULL, NULL), SOV_OK);
    assert_non_null(strstr(path, "step-90"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(direct_files),
        cmocka_unit_test(buffered_files),
        cmocka_unit_test(many_small_chunks),
        cmocka_unit_test(refused_writes_fail_the_save),
        cmocka_unit_test(format_versions),
        cmocka_unit_test(padding_and_layout_are_checked),
        cmocka_unit_test(a_rank_with_no_chunks),
        cmocka_unit_test(reads_of_growing_chunks),
        cmocka_unit_test(metadata_after_the_data),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
