/* Checkpoint chunks: bitwise round trips for every element size and type and awkward values; compression where the bytes
 * allow it, and planes that would gain too little stored raw; exponent planes paired (coding 2), with escapes
 * anywhere; every single-byte corruption of an encoded chunk detected, and pair headers that disagree with their
 * data refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "codec.h"
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

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

static size_t round_trip_as(const void *raw, size_t bytes, int elem, int transform) {
    size_t n = 0, got = 0;
    assert_int_equal(sov_chunk_encode(codec, raw, bytes, elem, transform, out, &n), SOV_OK);
    assert_true(n <= sov_chunk_bound(bytes));
    assert_int_equal(sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test"), SOV_OK);
    assert_int_equal(got, bytes);
    assert_memory_equal(raw, back, bytes);
    return n;
}

/* Floats' planes for 2-, 4- and 8-byte elements, one plane for bytes: what the writer does for float buffers. */
static size_t round_trip(const void *raw, size_t bytes, int elem) {
    return round_trip_as(raw, bytes, elem, elem > 1 ? SOV_TRANSFORM_FLOAT : SOV_TRANSFORM_NONE);
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
    assert_int_equal(sov_chunk_encode(codec, x, sizeof x, 4, SOV_TRANSFORM_FLOAT, out, &n), SOV_OK);
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
    assert_int_equal(sov_chunk_encode(big, x, BIG, 4, SOV_TRANSFORM_FLOAT, enc, &n), SOV_OK);
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
    assert_int_equal(sov_chunk_encode(big, x, BIG, 4, SOV_TRANSFORM_FLOAT, enc, &n), SOV_OK);
    sov_chunk_header h;
    assert_int_equal(sov_chunk_parse_header(enc, &h, "test"), SOV_OK);
    assert_int_not_equal(h.coding[0], 0); /* compressed, so the raw planes after it went through scratch */
    assert_int_equal(h.coding[1], 0);
    assert_int_equal(h.coding[2], 0);
    assert_int_equal(h.coding[3], 2);
    assert_int_equal(sov_chunk_decode(big, enc, n, y, BIG, &got, "test"), SOV_OK);
    assert_memory_equal(x, y, BIG);
    free(x);
    free(y);
    free(enc);
    sov_codec_destroy(big);
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Where plane k's stored bytes start in an encoded chunk. */
static const uint8_t *plane_at(const uint8_t *chunk, const sov_chunk_header *h, int k) {
    size_t at = SOV_CHUNK_HEADER_BYTES;
    for (int j = 0; j < k; j++)
        at += h->plane_bytes[j];
    return chunk + at;
}

/* Round-trips count f32 values, which must come out with their exponent plane (the last) paired; *h gets the
 * header and *pair_at the offset of that plane in `out`. Returns the chunk's size. */
static size_t paired_chunk(const float *x, size_t count, sov_chunk_header *h, size_t *pair_at) {
    size_t n = round_trip(x, count * 4, 4);
    assert_int_equal(sov_chunk_parse_header(out, h, "test"), SOV_OK);
    assert_int_equal(h->coding[3], 2);
    *pair_at = (size_t)(plane_at(out, h, 3) - out);
    return n;
}

/* Exponents (byte 3 after the sign move, i.e. bits 23..30) outside the window [base, base + 14]. */
static size_t outside_window(const float *x, size_t n, uint8_t base) {
    size_t e = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        e += (uint8_t)((uint8_t)(u >> 23) - base) >= 15;
    }
    return e;
}

/* Gaussian weights put nearly every exponent in one window of 15 values: the exponent plane is paired (coding 2),
 * the exponents outside the window are its escapes, and the ratio stays near the order-0 bound. */
static void exponent_planes_are_paired(void **state) {
    (void)state;
    static float x[MAX / 4];
    gaussian(x, MAX / 4, 7);
    sov_chunk_header h;
    size_t at, n = paired_chunk(x, MAX / 4, &h, &at);
    const uint8_t *p = out + at;
    assert_int_equal(le32(p + 4), outside_window(x, MAX / 4, p[0]));
    assert_true((double)sizeof x / (double)n > 1.19); /* the order-0 bound of such weights is ~1.21 */
    static uint16_t b[MAX / 2];
    for (size_t i = 0; i < MAX / 2; i++) {
        uint32_t u;
        memcpy(&u, &x[i % (MAX / 4)], 4);
        b[i] = (uint16_t)(u >> 16);
    }
    round_trip(b, sizeof b, 2);
    assert_int_equal(sov_chunk_parse_header(out, &h, "test"), SOV_OK);
    assert_int_equal(h.coding[1], 2);
}

/* |gaussian(seed)|, with the elements of every 16th run of 256 zeroed when `runs` is set. */
static void positive_weights(float *x, size_t n, uint64_t seed, int runs) {
    gaussian(x, n, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = runs && (i / 256) % 16 == 0 ? 0.0f : fabsf(x[i]);
}

/* An all-positive buffer (AdamW's second moment) has a constant sign bit in plane 0: 7 bits per byte, which a
 * Huffman pass would cut by only 1/8 for its cost at both ends, so the plane is bit-packed instead (coding 3: the
 * constant bit dropped, 7/8 of the plane). With runs of zeros in it (1/16 of the elements: entropy ~6.9 bits, still
 * above the 6.75 cut) level 1's matches pay, and it is zstd-coded. */
static void low_gain_planes_stay_raw_unless_runs_pay(void **state) {
    (void)state;
    static float x[MAX / 4];
    sov_chunk_header h;
    positive_weights(x, MAX / 4, 11, 0);
    round_trip(x, sizeof x, 4);
    assert_int_equal(sov_chunk_parse_header(out, &h, "test"), SOV_OK);
    assert_int_equal(h.coding[0], 3);
    assert_int_equal(h.plane_bytes[0], 4 + (MAX / 4) * 7 / 8);
    assert_int_equal(out[SOV_CHUNK_HEADER_BYTES], 0x01); /* the mask: bit 0, the sign */
    assert_int_equal(h.coding[1], 0);                    /* a mantissa byte: raw */
    assert_int_equal(h.coding[3], 2);
    positive_weights(x, MAX / 4, 11, 1);
    round_trip(x, sizeof x, 4);
    assert_int_equal(sov_chunk_parse_header(out, &h, "test"), SOV_OK);
    assert_int_equal(h.coding[0], 1);
}

/* Escapes anywhere: the first and last element of an odd count, a whole block of 64 of them, a spread of others;
 * many enough to go as a zstd frame, or one alone, stored as it is. */
static void pair_escapes_round_trip(void **state) {
    (void)state;
    enum { N = MAX / 4 - 1 };
    static float x[N];
    gaussian(x, N, 8);
    x[0] = 1e30f;
    x[N - 1] = -1e-30f;
    for (size_t i = 64; i < 128; i++)
        x[i] = 1e20f;
    for (size_t i = 200; i < N; i += 97)
        x[i] = 3e10f;
    sov_chunk_header h;
    size_t at;
    paired_chunk(x, N, &h, &at);
    const uint8_t *p = out + at;
    assert_int_equal(le32(p + 4), outside_window(x, N, p[0]));
    assert_true(le32(p + 4) >= 64 + 2 + 100);
    assert_int_equal(p[1], 1); /* the escapes as a zstd frame */
    gaussian(x, N, 9);
    x[N / 2] = 1e30f;
    paired_chunk(x, N, &h, &at);
    p = out + at;
    assert_int_equal(p[1], 0); /* as they are */
    assert_true(le32(p + 4) >= 1);
}

/* Rewrites a chunk's checksums after a change, so that only the decoder's own checks can catch it. */
static void reseal(uint8_t *chunk, size_t n) {
    uint64_t stored = XXH3_64bits(chunk + SOV_CHUNK_HEADER_BYTES, n - SOV_CHUNK_HEADER_BYTES), head;
    for (int i = 0; i < 8; i++)
        chunk[32 + i] = (uint8_t)(stored >> 8 * i);
    head = XXH3_64bits(chunk, 104);
    for (int i = 0; i < 8; i++)
        chunk[104 + i] = (uint8_t)(head >> 8 * i);
}

/* A paired plane whose pair header disagrees with its data, checksums resealed: every one refused, none crashes
 * (the fuzzer explores the rest, tests/fuzz). */
static void inconsistent_pair_headers_are_refused(void **state) {
    (void)state;
    static float x[MAX / 4];
    gaussian(x, MAX / 4, 10);
    for (size_t i = 3; i < MAX / 4; i += 61)
        x[i] = 1e25f; /* about 270 escapes, a frame of them */
    sov_chunk_header h;
    size_t at, got, n = paired_chunk(x, MAX / 4, &h, &at);
    assert_int_equal(out[at + 1], 1);
    static uint8_t bad[SOV_CHUNK_HEADER_BYTES + MAX];
    struct {
        size_t offset;
        int delta;
        const char *says; /* which of the decoder's checks must catch it */
    } edits[] = {
        {1, 1, "bad pair-coding header"},  /* escape coding 2 */
        {1, -1, "escapes are not"},        /* 0: the escapes' frame read as raw bytes */
        {2, 1, "bad pair-coding header"},  /* the zero bytes */
        {3, 7, "bad pair-coding header"},
        {4, 1, "escapes are not"},         /* one escape more than the frame holds, one fewer */
        {4, -1, "escapes are not"},
        {7, 1, "bad pair-coding header"},  /* far more escapes than the plane has bytes */
        {8, 1, "codes do not decompress"}, /* the codes' frame one byte longer, one shorter, past the plane */
        {8, -1, "codes do not decompress"},
        {11, 1, "bad pair-coding header"},
    };
    for (size_t e = 0; e < sizeof edits / sizeof edits[0]; e++) {
        memcpy(bad, out, n);
        bad[at + edits[e].offset] = (uint8_t)(bad[at + edits[e].offset] + edits[e].delta);
        reseal(bad, n);
        if (sov_chunk_decode(codec, bad, n, back, sizeof back, &got, "test") == SOV_OK)
            fail_msg("pair header byte %zu %+d was accepted", edits[e].offset, edits[e].delta);
        if (!strstr(sov_last_error(), edits[e].says))
            fail_msg("pair header byte %zu %+d: \"%s\", expected \"%s\"", edits[e].offset, edits[e].delta,
                     sov_last_error(), edits[e].says);
    }
}

static void put_le(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

/* Chunks that decode to the right bytes but are not what the writer makes, so only the decoder's own checks can
 * refuse them: an escape more than the codes call for, and an odd plane whose last, unused nibble is not 0. Both
 * edit the last plane, the paired one, which ends the chunk. */
static void non_canonical_pairs_are_refused(void **state) {
    (void)state;
    enum { N = MAX / 4 - 1 }; /* odd */
    static float x[N];
    gaussian(x, N, 11);
    x[5] = 1e30f; /* a few escapes, stored as they are */
    sov_chunk_header h;
    size_t at, got, n = paired_chunk(x, N, &h, &at);
    assert_int_equal(out[at + 1], 0);
    static uint8_t bad[SOV_CHUNK_HEADER_BYTES + MAX + 4096];
    /* one more escape byte at the end, counted in the pair header, the plane and the payload */
    memcpy(bad, out, n);
    bad[n] = 0x7f;
    put_le(bad + at + 4, le32(out + at + 4) + 1, 4);
    put_le(bad + 48 + 4 * 3, h.plane_bytes[3] + 1, 4);
    put_le(bad + 16, h.stored_bytes + 1, 8);
    reseal(bad, n + 1);
    assert_int_not_equal(sov_chunk_decode(codec, bad, n + 1, back, sizeof back, &got, "test"), SOV_OK);
    assert_non_null(strstr(sov_last_error(), "codes do not match"));
    /* the codes' frame made again with the unused nibble set */
    size_t half = (N + 1) / 2, frame = le32(out + at + 8), tail = h.plane_bytes[3] - 12 - frame;
    static uint8_t codes[MAX / 8 + 1];
    assert_int_equal(ZSTD_decompress(codes, half, out + at + 12, frame), half);
    codes[half - 1] |= 0x10;
    size_t reframed = ZSTD_compress(bad + at + 12, sizeof bad - at - 12 - tail, codes, half, 1);
    assert_false(ZSTD_isError(reframed));
    memcpy(bad, out, at + 12);
    memcpy(bad + at + 12 + reframed, out + at + 12 + frame, tail);
    size_t plane = 12 + reframed + tail, len = at + plane;
    put_le(bad + at + 8, reframed, 4);
    put_le(bad + 48 + 4 * 3, plane, 4);
    put_le(bad + 16, len - SOV_CHUNK_HEADER_BYTES, 8);
    reseal(bad, len);
    assert_int_not_equal(sov_chunk_decode(codec, bad, len, back, sizeof back, &got, "test"), SOV_OK);
    assert_non_null(strstr(sov_last_error(), "codes do not match"));
}

/* Every element type a checkpoint holds: f64 floats' planes, integers' plain planes, one-byte types whole. Each
 * round-trips bitwise, each compresses where its bytes allow (small integers: the high planes are constant), and
 * every single-byte change of an integer chunk is detected. */
static void every_dtype_round_trips(void **state) {
    (void)state;
    assert_int_equal(sov_transform_for(SOV_F64), SOV_TRANSFORM_FLOAT);
    assert_int_equal(sov_transform_for(SOV_I32), SOV_TRANSFORM_INT);
    assert_int_equal(sov_transform_for(SOV_BOOL), SOV_TRANSFORM_NONE);
    static double d[MAX / 8];
    static float g[MAX / 8];
    gaussian(g, MAX / 8, 21);
    for (size_t i = 0; i < MAX / 8; i++)
        d[i] = (double)g[i] * (1.0 + 1e-9 * (double)i); /* full 52-bit mantissas */
    assert_true(round_trip_as(d, sizeof d, 8, SOV_TRANSFORM_FLOAT) < sizeof d * 95 / 100);
    sov_rng rng;
    sov_rng_seed(&rng, 22, 0);
    static int64_t tokens[MAX / 8]; /* token ids under 50257, a step counter */
    for (size_t i = 0; i < MAX / 8; i++)
        tokens[i] = (int64_t)(sov_rng_next(&rng) % 50257);
    size_t n = round_trip_as(tokens, sizeof tokens, 8, SOV_TRANSFORM_INT);
    assert_true(n < sizeof tokens * 40 / 100); /* 6 of 8 planes are zeros: ~2.1 of 8 bytes left */
    static int32_t small[MAX / 4]; /* small values of both signs: high planes 0x00 or 0xff */
    for (size_t i = 0; i < MAX / 4; i++)
        small[i] = (int32_t)(sov_rng_next(&rng) % 200) - 100;
    assert_true(round_trip_as(small, sizeof small, 4, SOV_TRANSFORM_INT) < sizeof small / 2);
    static int16_t shorts[MAX / 2];
    for (size_t i = 0; i < MAX / 2; i++)
        shorts[i] = (int16_t)sov_rng_next(&rng);
    round_trip_as(shorts, sizeof shorts, 2, SOV_TRANSFORM_INT);
    round_trip_as(shorts, 6, 2, SOV_TRANSFORM_INT); /* 3 elements */
    static uint8_t flags[MAX]; /* bools: one bit of information per byte */
    for (size_t i = 0; i < MAX; i++)
        flags[i] = (uint8_t)(sov_rng_next(&rng) & 1);
    assert_true(round_trip_as(flags, sizeof flags, 1, SOV_TRANSFORM_NONE) < sizeof flags / 4);
    size_t got;
    assert_int_equal(sov_chunk_encode(codec, small, 4096, 4, SOV_TRANSFORM_INT, out, &n), SOV_OK);
    for (size_t i = 0; i < n; i++) {
        out[i] ^= 0x10;
        if (sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test") == SOV_OK)
            fail_msg("byte %zu of an integer chunk of %zu xor 0x10 went undetected", i, n);
        out[i] ^= 0x10;
    }
    /* what no element type allows: planes of one-byte elements, an unknown transform, 3-byte elements */
    assert_int_equal(sov_chunk_encode(codec, flags, 64, 1, SOV_TRANSFORM_INT, out, &n), SOV_ERR_INVALID);
    assert_int_equal(sov_chunk_encode(codec, small, 64, 4, 3, out, &n), SOV_ERR_INVALID);
    assert_int_equal(sov_chunk_encode(codec, small, 63, 3, SOV_TRANSFORM_NONE, out, &n), SOV_ERR_INVALID);
    assert_int_equal(sov_chunk_encode(codec, small, 4096, 4, SOV_TRANSFORM_INT, out, &n), SOV_OK);
    static uint8_t bad[SOV_CHUNK_HEADER_BYTES + MAX];
    memcpy(bad, out, n);
    bad[6] = 3; /* transform 3, resealed */
    reseal(bad, n);
    assert_int_not_equal(sov_chunk_decode(codec, bad, n, back, sizeof back, &got, "test"), SOV_OK);
    assert_non_null(strstr(sov_last_error(), "inconsistent chunk header"));
}

/* Coding 3 on its own: bytes whose top bit is always clear, or whose bit 0 always set (7 free bits: the second
 * moment's low byte), and bytes whose middle bits are fixed (3 free bits), of lengths that end mid-group and
 * mid-byte, packed to k/8 of their size and back bitwise; a damaged
 * packing header, or a set bit past the last packed one, resealed, is refused. */
static void constant_bits_are_packed(void **state) {
    (void)state;
    static uint8_t b[MAX];
    sov_rng rng;
    sov_rng_seed(&rng, 31, 0);
    const size_t lens[] = {MAX, MAX - 5, 4099, 1001};
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
        for (int shape = 0; shape < 3; shape++) {
            for (size_t i = 0; i < lens[l]; i++) {
                uint8_t r = (uint8_t)sov_rng_next(&rng);
                b[i] = shape == 2 ? (uint8_t)((r & 0x07) | 0x50) : shape == 1 ? (uint8_t)(r | 0x01) : (uint8_t)(r & 0x7f);
            }
            size_t n = 0, got;
            assert_int_equal(sov_chunk_encode(codec, b, lens[l], 1, SOV_TRANSFORM_NONE, out, &n), SOV_OK);
            sov_chunk_header h;
            assert_int_equal(sov_chunk_parse_header(out, &h, "test"), SOV_OK);
            if (shape < 2) { /* 7 bits of entropy: packed; 3 bits: Huffman does better than packing */
                assert_int_equal(h.coding[0], 3);
                assert_int_equal(h.plane_bytes[0], 4 + (lens[l] * 7 + 7) / 8);
            }
            assert_int_equal(sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test"), SOV_OK);
            assert_int_equal(got, lens[l]);
            assert_memory_equal(b, back, lens[l]);
        }
    size_t n, got; /* 1001 bytes of 7 bits: 876.75 packed bytes, so the last one has one unused bit */
    for (size_t i = 0; i < 1001; i++)
        b[i] = (uint8_t)(sov_rng_next(&rng) & 0x7f);
    assert_int_equal(sov_chunk_encode(codec, b, 1001, 1, SOV_TRANSFORM_NONE, out, &n), SOV_OK);
    static uint8_t bad[SOV_CHUNK_HEADER_BYTES + MAX];
    const size_t at[] = {SOV_CHUNK_HEADER_BYTES, SOV_CHUNK_HEADER_BYTES + 1, SOV_CHUNK_HEADER_BYTES + 2, n - 1};
    const uint8_t set[] = {0xff, 0x80, 0x01, 0x80};
    for (size_t e = 0; e < sizeof at / sizeof at[0]; e++) {
        memcpy(bad, out, n);
        bad[at[e]] |= set[e];
        reseal(bad, n);
        if (sov_chunk_decode(codec, bad, n, back, sizeof back, &got, "test") == SOV_OK)
            fail_msg("a packed plane with byte %zu |= 0x%02x was accepted", at[e], set[e]);
    }
}

/* A header with a reserved byte or an unused plane entry set, resealed: refused, so each chunk has one header. */
static void non_canonical_headers_are_refused(void **state) {
    (void)state;
    static float x[4096];
    gaussian(x, 4096, 12);
    size_t n, got;
    assert_int_equal(sov_chunk_encode(codec, x, sizeof x, 4, SOV_TRANSFORM_FLOAT, out, &n), SOV_OK);
    static uint8_t bad[SOV_CHUNK_HEADER_BYTES + sizeof x];
    const size_t offsets[] = {7, 40 + 4, 40 + 7, 48 + 4 * 4, 48 + 4 * 7 + 3, 80, 91, 103}; /* 4 planes in use */
    for (size_t e = 0; e < sizeof offsets / sizeof offsets[0]; e++) {
        memcpy(bad, out, n);
        bad[offsets[e]] = 1;
        reseal(bad, n);
        if (sov_chunk_decode(codec, bad, n, back, sizeof back, &got, "test") == SOV_OK)
            fail_msg("header byte %zu set to 1 was accepted", offsets[e]);
        assert_non_null(strstr(sov_last_error(), "inconsistent chunk header"));
    }
}

/* A paired chunk bit-flipped: every byte of its header and of the pair header, and a spread of the rest. */
static void corruption_of_a_paired_chunk_is_detected(void **state) {
    (void)state;
    static float x[MAX / 4];
    gaussian(x, MAX / 4, 12);
    sov_chunk_header h;
    size_t at, got, n = paired_chunk(x, MAX / 4, &h, &at);
    for (size_t i = 0; i < n; i += i < SOV_CHUNK_HEADER_BYTES || (i >= at && i < at + 64) ? 1 : 13) {
        out[i] ^= 0x10;
        if (sov_chunk_decode(codec, out, n, back, sizeof back, &got, "test") == SOV_OK)
            fail_msg("byte %zu of %zu flipped went undetected", i, n);
        out[i] ^= 0x10;
    }
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
        cmocka_unit_test(exponent_planes_are_paired),
        cmocka_unit_test(low_gain_planes_stay_raw_unless_runs_pay),
        cmocka_unit_test(pair_escapes_round_trip),
        cmocka_unit_test(inconsistent_pair_headers_are_refused),
        cmocka_unit_test(non_canonical_pairs_are_refused),
        cmocka_unit_test(non_canonical_headers_are_refused),
        cmocka_unit_test(corruption_of_a_paired_chunk_is_detected),
        cmocka_unit_test(entropy_of_known_bytes),
        cmocka_unit_test(every_dtype_round_trips),
        cmocka_unit_test(constant_bits_are_packed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
