/* IDX / Fashion-MNIST loading: valid files (gzip'd and plain) load; every malformed input is refused with a
 * message that names the file and the problem. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static char dir[256];

static void write_file(const char *name, const void *data, size_t len, int gz) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (gz) {
        gzFile f = gzopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(gzwrite(f, data, (unsigned)len), (int)len);
        gzclose(f);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, len, f), len);
        fclose(f);
    }
}

/* IDX bytes for `n` images of 2x3 pixels, or `n` labels. */
static size_t make_images(unsigned char *buf, int n) {
    unsigned char hdr[16] = {0, 0, 8, 3, 0, 0, 0, (unsigned char)n, 0, 0, 0, 2, 0, 0, 0, 3};
    memcpy(buf, hdr, 16);
    for (int i = 0; i < n * 6; i++)
        buf[16 + i] = (unsigned char)(i * 37);
    return 16 + (size_t)n * 6;
}

static size_t make_labels(unsigned char *buf, int n) {
    unsigned char hdr[8] = {0, 0, 8, 1, 0, 0, 0, (unsigned char)n};
    memcpy(buf, hdr, 8);
    for (int i = 0; i < n; i++)
        buf[8 + i] = (unsigned char)(i % 10);
    return 8 + (size_t)n;
}

static void write_valid_split(int gz) {
    unsigned char img[256], lbl[64];
    write_file(gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte", img, make_images(img, 4), gz);
    write_file(gz ? "train-labels-idx1-ubyte.gz" : "train-labels-idx1-ubyte", lbl, make_labels(lbl, 4), gz);
}

static int make_dir(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/sovtrain-test-idx-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

static void expect_error(sov_status want, const char *needle) {
    sov_dataset ds;
    assert_int_equal(sov_mnist_load(dir, "train", &ds), want);
    if (!strstr(sov_last_error(), needle))
        fail_msg("error \"%s\" does not mention \"%s\"", sov_last_error(), needle);
    assert_null(ds.pixels);
}

static void gzip_and_plain_files_load(void **state) {
    for (int gz = 1; gz >= 0; gz--) {
        make_dir(state);
        write_valid_split(gz);
        sov_dataset ds;
        assert_int_equal(sov_mnist_load(dir, "train", &ds), SOV_OK);
        assert_int_equal(ds.count, 4);
        assert_int_equal(ds.dim, 6);
        assert_int_equal(ds.labels[3], 3);
        assert_int_equal(ds.pixels[7], (unsigned char)(7 * 37));
        float x[2 * 6];
        int32_t y[2], idx[2] = {3, 1};
        sov_dataset_gather(&ds, idx, 2, x, y);
        assert_int_equal(y[0], 3);
        assert_int_equal(y[1], 1);
        assert_true(x[0] > -1.0f && x[0] < 3.0f); /* normalised, not raw bytes */
        sov_dataset_free(&ds);
        remove_dir(state);
    }
}

static void missing_directory_and_file(void **state) {
    (void)state;
    sov_dataset ds;
    assert_int_equal(sov_mnist_load("/nonexistent/fashion", "train", &ds), SOV_ERR_IO);
    assert_non_null(strstr(sov_last_error(), "/nonexistent/fashion"));
    make_dir(state);
    expect_error(SOV_ERR_IO, "train-images-idx3-ubyte");
    remove_dir(state);
}

static void truncated_payload(void **state) {
    unsigned char img[256], lbl[64];
    size_t n = make_images(img, 4);
    write_file("train-images-idx3-ubyte.gz", img, n - 5, 1);
    write_file("train-labels-idx1-ubyte.gz", lbl, make_labels(lbl, 4), 1);
    (void)state;
    expect_error(SOV_ERR_FORMAT, "truncated");
    expect_error(SOV_ERR_FORMAT, "train-images-idx3-ubyte.gz");
}

static void truncated_gzip_stream(void **state) {
    (void)state;
    unsigned char img[256], lbl[64];
    write_valid_split(1);
    /* Cut the compressed file itself in half: zlib must report it, and we must not accept a short read. */
    char path[512];
    snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", dir);
    FILE *f = fopen(path, "rb");
    unsigned char gz[512];
    size_t len = fread(gz, 1, sizeof gz, f);
    fclose(f);
    write_file("train-images-idx3-ubyte.gz", gz, len / 2, 0);
    (void)img, (void)lbl;
    expect_error(SOV_ERR_FORMAT, "train-images-idx3-ubyte.gz");
}

static void wrong_magic(void **state) {
    (void)state;
    unsigned char img[256], lbl[64];
    size_t n = make_images(img, 4);
    img[2] = 0x0D; /* float data, not unsigned bytes */
    write_file("train-images-idx3-ubyte.gz", img, n, 1);
    write_file("train-labels-idx1-ubyte.gz", lbl, make_labels(lbl, 4), 1);
    expect_error(SOV_ERR_FORMAT, "magic");
}

static void header_only_and_empty(void **state) {
    (void)state;
    unsigned char lbl[64];
    write_file("train-images-idx3-ubyte.gz", "", 0, 1);
    write_file("train-labels-idx1-ubyte.gz", lbl, make_labels(lbl, 4), 1);
    expect_error(SOV_ERR_FORMAT, "truncated");
}

static void absurd_dimensions_are_refused_before_allocating(void **state) {
    (void)state;
    unsigned char img[16] = {0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9};
    unsigned char lbl[64];
    write_file("train-images-idx3-ubyte.gz", img, 16, 1);
    write_file("train-labels-idx1-ubyte.gz", lbl, make_labels(lbl, 4), 1);
    expect_error(SOV_ERR_FORMAT, "not a dataset file");
}

static void trailing_bytes(void **state) {
    (void)state;
    unsigned char img[256], lbl[64];
    size_t n = make_images(img, 4);
    write_file("train-images-idx3-ubyte.gz", img, n + 3, 1);
    write_file("train-labels-idx1-ubyte.gz", lbl, make_labels(lbl, 4), 1);
    expect_error(SOV_ERR_FORMAT, "trailing");
}

static void label_count_and_range(void **state) {
    (void)state;
    unsigned char img[256], lbl[64];
    write_file("train-images-idx3-ubyte.gz", img, make_images(img, 4), 1);
    write_file("train-labels-idx1-ubyte.gz", lbl, make_labels(lbl, 3), 1);
    expect_error(SOV_ERR_FORMAT, "3 labels but");
    size_t n = make_labels(lbl, 4);
    lbl[9] = 12;
    write_file("train-labels-idx1-ubyte.gz", lbl, n, 1);
    expect_error(SOV_ERR_FORMAT, "label 12 of sample 1");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gzip_and_plain_files_load),
        cmocka_unit_test(missing_directory_and_file),
        cmocka_unit_test_setup_teardown(truncated_payload, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(truncated_gzip_stream, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(wrong_magic, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(header_only_and_empty, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(absurd_dimensions_are_refused_before_allocating, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(trailing_bytes, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(label_count_and_range, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
