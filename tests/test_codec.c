/* Checkpoint chunks: bitwise round trips for every element size and awkward values; compression where the bytes
 * allow it; every single-byte corruption of an encoded chunk detected. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "codec.h"
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MAX = 1 << 16 };

static sov_codec *codec;
static uint8_t out[SOV_CHUNK_HEADER_BYTES + MAX], back[MAX];

static int setup(void **state) {
    (void)state;
    return sov_codec_create(&codec, MAX) == SOV_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sov_codec_destroy(codec);
    return 0;
}

static size_t round_trip(const void *raw, size_t bytes, int elem) {
    size_t n = 0, got = 0;
    assert_int_equal(sov_chunk_encode(codec, raw, bytes, elem, out, &n), SOV_OK);
    assert_true(n <= sov_chunk_bound(bytes));
    assert_int_equal(sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test"), SOV_OK);
    assert_int_equal(got, bytes);
    assert_memory_equal(raw, back, bytes);
    return n;
}

/* Gaussian weights (sigma 0.02), as a trained model's. */
static void gaussian(float *x, size_t n, uint64_t seed) {
    sov_rng rng;
    sov_rng_seed(&rng, seed, 0);
    for (size_t i = 0; i < n; i++) {
        float u = sov_rng_uniform(&rng) + 1e-7f, v = sov_rng_uniform(&rng);
        x[i] = 0.02f * sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
    }
}

static void f32_round_trips_and_compresses(void **state) {
    (void)state;
    static float x[MAX / 4];
    gaussian(x, MAX / 4, 1);
    size_t n = round_trip(x, sizeof x, 4);
    /* DESIGN: the entropy bound of such weights is ~1.21; accept anything clearly compressed */
    assert_true((double)sizeof x / (double)n > 1.15);
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-45f, -1e-45f, 3.4e38f, -1.0f, 1.0f};
    round_trip(specials, sizeof specials, 4);
    memset(x, 0, sizeof x); /* all zeros: tiny */
    assert_true(round_trip(x, sizeof x, 4) < 1024);
}

static void other_sizes_round_trip(void **state) {
    (void)state;
    static uint16_t h[MAX / 2];
    static float x[MAX / 4];
    gaussian(x, MAX / 4, 2);
    for (size_t i = 0; i < MAX / 2; i++) { /* bf16 of Gaussian weights */
        uint32_t u;
        memcpy(&u, &x[i % (MAX / 4)], 4);
        h[i] = (uint16_t)(u >> 16);
    }
    round_trip(h, sizeof h, 2);
    round_trip(h, 6, 2);          /* 3 elements */
    round_trip(x, 4, 4);          /* one element */
    round_trip("abcdefgh", 7, 1); /* bytes, odd length */
    round_trip(x, 0, 4);          /* empty */
    sov_rng rng;                  /* incompressible bytes are stored raw */
    sov_rng_seed(&rng, 3, 0);
    static uint8_t noise[MAX];
    for (size_t i = 0; i < MAX; i++)
        noise[i] = (uint8_t)sov_rng_next(&rng);
    assert_int_equal(round_trip(noise, MAX, 4), SOV_CHUNK_HEADER_BYTES + MAX);
}

static void every_single_byte_corruption_is_detected(void **state) {
    (void)state;
    static float x[1024];
    gaussian(x, 1024, 4);
    x[7] = 0.0f;
    size_t n = 0, got;
    assert_int_equal(sov_chunk_encode(codec, x, sizeof x, 4, out, &n), SOV_OK);
    for (size_t i = 0; i < n; i++)
        for (int flip = 0; flip < 3; flip++) {
            uint8_t saved = out[i], mask = flip == 0 ? 0x01 : flip == 1 ? 0x80 : 0xff;
            out[i] ^= mask;
            if (sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test") == SOV_OK)
                fail_msg("byte %zu of %zu xor 0x%02x went undetected", i, n, mask);
            out[i] = saved;
        }
    /* truncated or extended */
    assert_int_not_equal(sov_chunk_decode(codec, out, n - 1, back, sizeof back, &got, "test"), SOV_OK);
    assert_int_not_equal(sov_chunk_decode(codec, out, 50, back, sizeof back, &got, "test"), SOV_OK);
    assert_int_equal(sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test"), SOV_OK);
    assert_int_not_equal(sov_chunk_decode(codec, out, n, back, 100, &got, "test"), SOV_OK); /* too small a target */
}

/* Chunks larger than the sample (planes judged on 16 spread blocks), and the placements of planes: runs of zeros
 * (the level-1 trial), and a compressed low plane followed by a raw one (planes after a compressed one are split
 * to scratch and copied, not written in place). */
static void large_chunks_and_plane_placements(void **state) {
    (void)state;
    enum { BIG = 1 << 20, N = BIG / 4 };
    sov_codec *big;
    assert_int_equal(sov_codec_create(&big, BIG), SOV_OK);
    float *x = malloc(BIG), *y = malloc(BIG);
    uint8_t *enc = malloc(sov_chunk_bound(BIG));
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(enc);
    gaussian(x, N, 5);
    for (size_t i = 0; i < N; i++) /* every other run of 256 elements zero, as in a moment of unused inputs */
        if ((i / 256) % 2)
            x[i] = 0.0f;
    size_t n = 0, got = 0;
    assert_int_equal(sov_chunk_encode(big, x, BIG, 4, enc, &n), SOV_OK);
    assert_int_equal(sov_chunk_decode(big, enc, n, y, BIG, &got, "test"), SOV_OK);
    assert_memory_equal(x, y, BIG);
    assert_true((double)BIG / (double)n > 2.0); /* half zeros: at least twice smaller */
    gaussian(x, N, 6); /* |x| with the 7 low mantissa bits cleared: plane 0 constant, planes 1-2 near random */
    for (size_t i = 0; i < N; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u &= 0x7fffff80u;
        memcpy(&x[i], &u, 4);
    }
    assert_int_equal(sov_chunk_encode(big, x, BIG, 4, enc, &n), SOV_OK);
    sov_chunk_header h;
    assert_int_equal(sov_chunk_parse_header(enc, &h, "test"), SOV_OK);
    assert_int_equal(h.coding[0], 1); /* compressed, so the raw planes after it went through scratch */
    assert_int_equal(h.coding[1], 0);
    assert_int_equal(h.coding[2], 0);
    assert_int_equal(h.coding[3], 1);
    assert_int_equal(sov_chunk_decode(big, enc, n, y, BIG, &got, "test"), SOV_OK);
    assert_memory_equal(x, y, BIG);
    free(x);
    free(y);
    free(enc);
    sov_codec_destroy(big);
}

static void entropy_of_known_bytes(void **state) {
    (void)state;
    uint8_t two[1000];
    for (int i = 0; i < 1000; i++)
        two[i] = (uint8_t)(i & 1);
    assert_float_equal(sov_entropy_bits(two, 1000), 1.0, 1e-9);
    memset(two, 9, sizeof two);
    assert_float_equal(sov_entropy_bits(two, 1000), 0.0, 1e-9);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(f32_round_trips_and_compresses),
        cmocka_unit_test(other_sizes_round_trip),
        cmocka_unit_test(every_single_byte_corruption_is_detected),
        cmocka_unit_test(large_chunks_and_plane_placements),
        cmocka_unit_test(entropy_of_known_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
