/* fuzz_chunk.c: libFuzzer target for the checkpoint chunk codec (checkpoint/codec.c).
 *
 * Each input is
 *  1. decoded as a chunk as it is (must fail cleanly or succeed, never crash);
 *  2. decoded again with its header and payload checksums recomputed, so that the fuzzer gets past the xxh3
 *     checks into the header's shape checks, zstd and the plane transform, once into the 1 MiB buffer and once
 *     into a heap buffer exactly as large as the header's raw size (as the reader's destinations are), so that
 *     ASan sees any write past raw_cap;
 *  3. when at least 8 bytes long: byte 0 picks an element size (1, 2 or 4) and the rest, cut to a whole number of
 *     elements, is encoded and decoded; the round trip must be bitwise identical. When bits 3..7 of byte 0 are all
 *     set the rest is first repeated to 68 KiB per plane, so that planes are big enough for the encoder's sampling.
 * Build and run: tests/fuzz/run.sh. */
#include "codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define MAX_RAW ((size_t)1 << 20)
#define TILED_PLANE ((size_t)68 << 10) /* bytes per plane of a tiled input: above the codec's 16 KiB sample */

static sov_codec *codec;
static _Alignas(64) uint8_t raw[MAX_RAW];
static _Alignas(64) uint8_t src[MAX_RAW]; /* the round trip's input, aligned as callers' buffers are */
static uint8_t encoded[SOV_CHUNK_HEADER_BYTES + MAX_RAW];
static uint8_t patched[SOV_CHUNK_HEADER_BYTES + MAX_RAW];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (sov_codec_create(&codec, MAX_RAW) != SOV_OK) {
        fprintf(stderr, "fuzz_chunk: %s\n", sov_last_error());
        abort();
    }
    return 0;
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t got = 0;
    (void)sov_chunk_decode(codec, data, size, raw, MAX_RAW, &got, "fuzz");

    if (size >= SOV_CHUNK_HEADER_BYTES && size <= sizeof patched) { /* checksums made right: reach the decoder */
        memcpy(patched, data, size);
        put64(patched + 32, XXH3_64bits(patched + SOV_CHUNK_HEADER_BYTES, size - SOV_CHUNK_HEADER_BYTES));
        put64(patched + 104, XXH3_64bits(patched, 104));
        (void)sov_chunk_decode(codec, patched, size, raw, MAX_RAW, &got, "fuzz (checksums fixed)");
        uint64_t cap = 0; /* again into a buffer exactly as large as the header's raw size, as the reader's are */
        for (int i = 0; i < 8; i++)
            cap |= (uint64_t)patched[8 + i] << 8 * i;
        uint8_t *tight = cap <= MAX_RAW ? malloc(cap ? (size_t)cap : 1) : NULL;
        if (tight)
            (void)sov_chunk_decode(codec, patched, size, tight, (size_t)cap, &got, "fuzz (tight buffer)");
        free(tight);
    }

    if (size >= 8) { /* round trip through the encoder */
        static const int sizes[7] = {1, 2, 4, 8, 2, 4, 8}; /* floats' planes, then integers' */
        int elem = sizes[data[0] % 7];
        int transform = elem == 1 ? SOV_TRANSFORM_NONE : data[0] % 7 < 4 ? SOV_TRANSFORM_FLOAT : SOV_TRANSFORM_INT;
        size_t n = size - 1 > MAX_RAW ? MAX_RAW : size - 1;
        memcpy(src, data + 1, n);
        size_t tiled = (size_t)elem * TILED_PLANE;
        if ((data[0] & 0xf8) == 0xf8 && n < tiled) { /* 1 input in 32: planes big enough to be sampled */
            for (size_t have = n; have < tiled; have *= 2)
                memcpy(src + have, src, have < tiled - have ? have : tiled - have);
            n = tiled;
        }
        n -= n % (size_t)elem;
        size_t enc_bytes = 0;
        if (sov_chunk_encode(codec, src, n, elem, transform, encoded, &enc_bytes) != SOV_OK) {
            fprintf(stderr, "fuzz_chunk: encode of %zu bytes (elements of %d) failed: %s\n", n, elem, sov_last_error());
            abort();
        }
        if (enc_bytes > sov_chunk_bound(n)) {
            fprintf(stderr, "fuzz_chunk: encoded %zu bytes into %zu, over the bound %zu\n", n, enc_bytes,
                    sov_chunk_bound(n));
            abort();
        }
        memset(raw, 0xa5, n);
        got = 0;
        if (sov_chunk_decode(codec, encoded, enc_bytes, raw, MAX_RAW, &got, "fuzz round trip") != SOV_OK) {
            fprintf(stderr, "fuzz_chunk: decoding a fresh encode failed: %s\n", sov_last_error());
            abort();
        }
        if (got != n || memcmp(raw, src, n) != 0) {
            fprintf(stderr, "fuzz_chunk: round trip of %zu bytes (elements of %d) differs (%zu bytes back)\n", n, elem,
                    got);
            abort();
        }
    }
    return 0;
}
