/* codec.c: see codec.h. */
#include "codec.h"
#include "bitpack.h"
#include "checksum.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_c_literalCompressionMode */
#include <zstd.h>

/* A plane's sample at or above NEAR_RANDOM_BITS is stored raw without a trial: mantissa bytes, 8 bits. One at or
 * above HUFFMAN_MIN_GAIN_BITS is stored raw too unless level 1's matches (runs, repeats) beat the literals: a Huffman
 * pass alone would save under 16 %, less than it costs (encode and decode, ~1 GB/s per core on the development VM:
 * more time than the disk saves). The low byte of an all-positive buffer (AdamW's second moment: a constant sign
 * bit) is 7 bits; coded, it cost the trained MLP's restore ~1.8 ms of decoding for 1 % of its bytes, and raw, its
 * restores ran 5-11 % faster (alternated scratch runs, medians of 40). */
#define NEAR_RANDOM_BITS 7.9
#define HUFFMAN_MIN_GAIN_BITS 6.75
/* Such a plane whose bytes share some bits (an all-positive tensor's low byte: its sign, moved to bit 0) is bit-packed
 * instead of stored raw (coding 3, bitpack.h): the constant bits go, at the cost of one pass, not a Huffman coder's. */
/* Decisions are taken on a sample of each plane: SAMPLE_BLOCKS runs of SAMPLE_BLOCK elements spread over the chunk.
 * 16 KiB estimate a plane's entropy to ~0.01 bit (the bias of 256 symbols' plug-in estimate); 64 KiB samples were
 * 1/16 of a 2 MiB chunk's bf16 planes and cost 4-7 % of its encoding (histograms and the sample's transform) for no
 * better choice. */
#define SAMPLE_BLOCKS 16
#define SAMPLE_BLOCK 1024 /* elements */
#define SAMPLE_BYTES (SAMPLE_BLOCKS * SAMPLE_BLOCK)
#define REPEAT_EXCESS 1.25 /* adjacent repeats this far above chance: the plane has runs for LZ matches to find */
#define PASS_ELEMS 8192 /* the transform's step: a block read from memory once, hashed, split and paired in L1 */
#define PAIRS_ESCAPE 15   /* the code of a byte outside the window; 0..14 are the window's bytes */
#define PAIRS_HEADER 12   /* base, escape coding, two zero bytes, u32 escapes, u32 packed frame size */
#define PAIRS_MIN_PLANE 4096 /* below this a second frame and the header cost more than pairing saves */
#define PAIRS_MAX_OUTSIDE 16 /* pair a plane when at most 1/16 of its sample falls outside the window */

struct sov_codec {
    size_t max_raw;
    uint8_t *planes;     /* max_raw: transformed planes on their way to the compressor (see split_to_places) */
    uint8_t *trial[2];   /* zstd outputs of the two parameter sets, on a sample */
    uint8_t *samples;    /* SAMPLE_BYTES of each plane, SOV_CHUNK_MAX_PLANES planes */
    uint8_t *pairs;      /* max_raw: the paired plane's packed codes, then its escapes (encoding only: at the first
                          * chunk to pair; decoding unpacks in the output) */
    uint8_t *pass;       /* PASS_ELEMS: the paired plane's bytes of one pass of the split */
    uint8_t pair_base;   /* the paired plane's window, and its escapes so far */
    size_t pair_escapes;
    sov_xxh3_stream *raw_hash;
    sov_xxh3_stream *stored_hash; /* the payload's, begun in the split when its first plane is stored raw */
    size_t trial_cap;
    ZSTD_CCtx *literal;  /* literals only: Huffman coding of the bytes, no matches */
    ZSTD_CCtx *level1;
    ZSTD_DCtx *dctx;
};

sov_status sov_codec_create(sov_codec **out, size_t max_raw) {
    sov_codec *c = sov_calloc(1, sizeof *c);
    if (!c)
        return SOV_ERR_NOMEM;
    c->max_raw = max_raw;
    c->trial_cap = ZSTD_compressBound(SAMPLE_BYTES); /* trials run on samples; planes compress straight to the output */
    c->planes = sov_malloc(max_raw);
    c->trial[0] = sov_malloc(c->trial_cap);
    c->trial[1] = sov_malloc(c->trial_cap);
    c->samples = sov_malloc((size_t)SAMPLE_BYTES * SOV_CHUNK_MAX_PLANES);
    c->raw_hash = sov_xxh3_stream_create();
    c->stored_hash = sov_xxh3_stream_create();
    c->literal = ZSTD_createCCtx();
    c->level1 = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    if (!c->planes || !c->trial[0] || !c->trial[1] || !c->samples || !c->raw_hash || !c->stored_hash || !c->literal ||
        !c->level1 || !c->dctx) {
        sov_codec_destroy(c);
        return sov_fail(SOV_ERR_NOMEM, "checkpoint codec: cannot allocate %zu bytes of scratch", max_raw);
    }
    /* DESIGN §4: on the exponent plane zstd's LZ matches cost more than they save; with no matches its Huffman
     * literal coder reaches ~98 % of the order-0 bound, faster. A large targetLength (the fast strategy's
     * acceleration) skips most of the match search: 1.3x faster here, same ratio; it would also switch the
     * literals to raw unless Huffman is asked for explicitly (an experimental parameter: when a libzstd refuses
     * it, the plain settings above still work). */
    ZSTD_CCtx_setParameter(c->literal, ZSTD_c_compressionLevel, 1);
    ZSTD_CCtx_setParameter(c->literal, ZSTD_c_strategy, ZSTD_fast);
    ZSTD_CCtx_setParameter(c->literal, ZSTD_c_minMatch, 7);
    ZSTD_CCtx_setParameter(c->literal, ZSTD_c_hashLog, 6);
    ZSTD_CCtx_setParameter(c->literal, ZSTD_c_searchLog, 1);
    if (!ZSTD_isError(ZSTD_CCtx_setParameter(c->literal, ZSTD_c_literalCompressionMode, ZSTD_ps_enable)))
        ZSTD_CCtx_setParameter(c->literal, ZSTD_c_targetLength, 64);
    ZSTD_CCtx_setParameter(c->level1, ZSTD_c_compressionLevel, 1);
    *out = c;
    return SOV_OK;
}

void sov_codec_destroy(sov_codec *c) {
    if (!c)
        return;
    free(c->planes);
    free(c->trial[0]);
    free(c->trial[1]);
    free(c->samples);
    free(c->pairs);
    free(c->pass);
    sov_xxh3_stream_free(c->raw_hash);
    sov_xxh3_stream_free(c->stored_hash);
    ZSTD_freeCCtx(c->literal);
    ZSTD_freeCCtx(c->level1);
    ZSTD_freeDCtx(c->dctx);
    free(c);
}

size_t sov_chunk_bound(size_t raw_bytes) { return SOV_CHUNK_HEADER_BYTES + raw_bytes; }

/* Four histograms, summed at the end: a run of equal bytes (an exponent plane is mostly a few values) would
 * otherwise make every increment wait for the one before it. */
static void histogram(const uint8_t *p, size_t n, uint32_t hist[256]) {
    uint32_t h[4][256] = {{0}};
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        h[0][p[i]]++;
        h[1][p[i + 1]]++;
        h[2][p[i + 2]]++;
        h[3][p[i + 3]]++;
    }
    for (; i < n; i++)
        h[0][p[i]]++;
    for (int b = 0; b < 256; b++)
        hist[b] = h[0][b] + h[1][b] + h[2][b] + h[3][b];
}

static double entropy_of(const uint32_t hist[256], size_t n) {
    double h = 0.0;
    for (int b = 0; b < 256; b++)
        if (hist[b]) {
            double q = (double)hist[b] / (double)n;
            h -= q * log2(q);
        }
    return h;
}

double sov_entropy_bits(const uint8_t *p, size_t n) {
    if (n == 0)
        return 0.0;
    uint32_t hist[256];
    histogram(p, n, hist);
    return entropy_of(hist, n);
}

/* ---- the transform ---- */

/* The format's elements and planes are little-endian, and so is the host this code reads them with. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the checkpoint codec needs a little-endian host");

/* The transform runs over every byte saved and restored: separate restrict plane pointers let the compiler
 * vectorise both loops (-O3, see CMakeLists.txt), and on x86-64 an AVX2 or AVX-512 clone is chosen at load time
 * when the CPU has it (SOV_SIMD_CLONES: 2-3x the SSE2 baseline here). */
SOV_SIMD_CLONES static void split4(const uint32_t *restrict x, size_t count, uint8_t *restrict p0,
                                   uint8_t *restrict p1, uint8_t *restrict p2, uint8_t *restrict p3) {
    for (size_t i = 0; i < count; i++) {
        uint32_t v = x[i] << 1 | x[i] >> 31; /* sign to bit 0: the exponent now fills byte 3 */
        p0[i] = (uint8_t)v;
        p1[i] = (uint8_t)(v >> 8);
        p2[i] = (uint8_t)(v >> 16);
        p3[i] = (uint8_t)(v >> 24);
    }
}

SOV_SIMD_CLONES static void split2(const uint16_t *restrict x, size_t count, uint8_t *restrict p0,
                                   uint8_t *restrict p1) {
    for (size_t i = 0; i < count; i++) {
        uint16_t v = (uint16_t)(x[i] << 1 | x[i] >> 15);
        p0[i] = (uint8_t)v;
        p1[i] = (uint8_t)(v >> 8);
    }
}

SOV_SIMD_CLONES static void join4(const uint8_t *restrict p0, const uint8_t *restrict p1, const uint8_t *restrict p2,
                                  const uint8_t *restrict p3, size_t count, uint32_t *restrict x) {
    for (size_t i = 0; i < count; i++) {
        uint32_t v = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 | (uint32_t)p3[i] << 24;
        x[i] = v >> 1 | v << 31;
    }
}

SOV_SIMD_CLONES static void join2(const uint8_t *restrict p0, const uint8_t *restrict p1, size_t count,
                                  uint16_t *restrict x) {
    for (size_t i = 0; i < count; i++) {
        uint16_t v = (uint16_t)(p0[i] | p1[i] << 8);
        x[i] = (uint16_t)(v >> 1 | v << 15);
    }
}

/* f64: the sign moves to bit 0 and the top byte holds the exponent's high 8 bits. */
static void split8(const uint64_t *restrict x, size_t count, uint8_t *const plane[]) {
    for (size_t i = 0; i < count; i++) {
        uint64_t v = x[i] << 1 | x[i] >> 63;
        for (int k = 0; k < 8; k++)
            plane[k][i] = (uint8_t)(v >> (8 * k));
    }
}

static void join8(const uint8_t *const plane[], size_t count, uint64_t *restrict x) {
    for (size_t i = 0; i < count; i++) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++)
            v |= (uint64_t)plane[k][i] << (8 * k);
        x[i] = v >> 1 | v << 63;
    }
}

/* Integers (transform 2): byte k of each element, unchanged. Small counts and indices leave their high planes
 * constant (0x00, or 0xff for small negatives), which the coder then stores in a few bytes. */
static void split_plain(const uint8_t *restrict x, size_t count, int elem_size, uint8_t *const plane[]) {
    for (int k = 0; k < elem_size; k++) {
        uint8_t *restrict dst = plane[k];
        for (size_t i = 0; i < count; i++)
            dst[i] = x[i * (size_t)elem_size + (size_t)k];
    }
}

static void join_plain(const uint8_t *const plane[], size_t count, int elem_size, uint8_t *restrict x) {
    for (int k = 0; k < elem_size; k++) {
        const uint8_t *restrict src = plane[k];
        for (size_t i = 0; i < count; i++)
            x[i * (size_t)elem_size + (size_t)k] = src[i];
    }
}

/* The transform of count elements into planes, each written from element `at` of its plane on. */
static void split_at(const void *raw, size_t count, int elem_size, int transform, uint8_t *const plane[], size_t at) {
    uint8_t *p[SOV_CHUNK_MAX_PLANES];
    for (int k = 0; k < elem_size; k++)
        p[k] = plane[k] + at;
    if (transform == SOV_TRANSFORM_INT)
        split_plain(raw, count, elem_size, p);
    else if (elem_size == 4)
        split4(raw, count, p[0], p[1], p[2], p[3]);
    else if (elem_size == 2)
        split2(raw, count, p[0], p[1]);
    else
        split8(raw, count, p);
}

void sov_planes_split(const void *raw, size_t count, int elem_size, int transform, uint8_t *planes) {
    uint8_t *plane[SOV_CHUNK_MAX_PLANES];
    for (int k = 0; k < elem_size; k++)
        plane[k] = planes + (size_t)k * count;
    split_at(raw, count, elem_size, transform, plane, 0);
}

static void planes_join(const uint8_t *const plane[], size_t count, int elem_size, int transform, void *raw) {
    if (transform == SOV_TRANSFORM_INT)
        join_plain(plane, count, elem_size, raw);
    else if (elem_size == 4)
        join4(plane[0], plane[1], plane[2], plane[3], count, raw);
    else if (elem_size == 2)
        join2(plane[0], plane[1], count, raw);
    else
        join8(plane, count, raw);
}

int sov_transform_for(sov_dtype dtype) {
    switch (dtype) {
    case SOV_F32: case SOV_BF16: case SOV_F16: case SOV_F64: return SOV_TRANSFORM_FLOAT;
    case SOV_I64: case SOV_I32: case SOV_I16: return SOV_TRANSFORM_INT;
    default: return SOV_TRANSFORM_NONE; /* one-byte elements: coded as they are */
    }
}

/* ---- nibble pairs (coding 2) ----
 * Byte b of a plane becomes the code b - base when that is below 15 (the window: 15 consecutive byte values), else
 * the escape code 15, and b goes to the escape list, in order. Two codes share a byte, the first in the low nibble.
 * An exponent plane has a few common values, so nearly every byte lands in the window; paired, the plane is half
 * as many bytes for zstd's Huffman coder, whose time goes per byte (1.8x faster here), and each symbol is a pair of
 * neighbours, which also codes part of their correlation. Both loops work on blocks of 64 bytes that the compiler
 * vectorises; the escapes, rare, are handled in a second look at the blocks that have any. */

#define PAIRS_BLOCK 64

/* Packs n bytes into (n + 1) / 2 bytes of codes (the last high nibble 0 when n is odd) and the escapes; returns the
 * number of escapes. */
SOV_SIMD_CLONES static size_t pack_pairs(const uint8_t *restrict plane, size_t n, uint8_t base,
                                         uint8_t *restrict packed, uint8_t *restrict escapes) {
    size_t e = 0, i = 0;
    for (; i + PAIRS_BLOCK <= n; i += PAIRS_BLOCK) {
        uint8_t code[PAIRS_BLOCK], outside = 0;
        for (int j = 0; j < PAIRS_BLOCK; j++) {
            uint8_t d = (uint8_t)(plane[i + j] - base);
            code[j] = d < PAIRS_ESCAPE ? d : PAIRS_ESCAPE;
            outside |= (uint8_t)(d >= PAIRS_ESCAPE);
        }
        for (int j = 0; j < PAIRS_BLOCK / 2; j++) { /* as a little-endian u16: low byte | high byte << 4 */
            uint16_t w;
            memcpy(&w, code + 2 * j, 2);
            packed[i / 2 + (size_t)j] = (uint8_t)(w | w >> 4);
        }
        for (int j = 0; outside && j < PAIRS_BLOCK; j++)
            if (code[j] == PAIRS_ESCAPE)
                escapes[e++] = plane[i + (size_t)j];
    }
    for (; i < n; i++) { /* the tail; i starts even */
        uint8_t d = (uint8_t)(plane[i] - base), code = d < PAIRS_ESCAPE ? d : PAIRS_ESCAPE;
        if (code == PAIRS_ESCAPE)
            escapes[e++] = plane[i];
        packed[i / 2] = i % 2 ? (uint8_t)(packed[i / 2] | code << 4) : code;
    }
    return e;
}

/* The inverse: n bytes from the codes and the escapes. Returns the escapes used, or SIZE_MAX when the codes call for
 * more than nesc. */
SOV_SIMD_CLONES static size_t unpack_pairs(const uint8_t *restrict packed, size_t n, uint8_t base,
                                           const uint8_t *restrict escapes, size_t nesc, uint8_t *restrict plane) {
    size_t e = 0, i = 0;
    for (; i + PAIRS_BLOCK <= n; i += PAIRS_BLOCK) {
        uint8_t code[PAIRS_BLOCK], outside = 0;
        for (int j = 0; j < PAIRS_BLOCK / 2; j++) { /* low nibble to byte 0, high nibble to byte 1 */
            uint16_t p = packed[i / 2 + (size_t)j], w = (uint16_t)((p | p << 4) & 0x0f0f);
            memcpy(code + 2 * j, &w, 2);
        }
        for (int j = 0; j < PAIRS_BLOCK; j++) {
            plane[i + (size_t)j] = (uint8_t)(base + code[j]);
            outside |= (uint8_t)(code[j] == PAIRS_ESCAPE);
        }
        for (int j = 0; outside && j < PAIRS_BLOCK; j++)
            if (code[j] == PAIRS_ESCAPE) {
                if (e == nesc)
                    return SIZE_MAX;
                plane[i + (size_t)j] = escapes[e++];
            }
    }
    for (; i < n; i++) {
        uint8_t code = (uint8_t)(packed[i / 2] >> 4 * (i % 2) & 15);
        if (code == PAIRS_ESCAPE && e == nesc)
            return SIZE_MAX;
        plane[i] = code == PAIRS_ESCAPE ? escapes[e++] : (uint8_t)(base + code);
    }
    return e;
}

/* ---- header (de)serialisation, little-endian ---- */

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << 8 * i;
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << 8 * i;
    return v;
}

static void header_write(const sov_chunk_header *h, uint8_t *p) {
    memset(p, 0, SOV_CHUNK_HEADER_BYTES);
    put32(p, h->magic);
    p[4] = h->elem_size, p[5] = h->planes, p[6] = h->transform, p[7] = 0;
    put64(p + 8, h->raw_bytes);
    put64(p + 16, h->stored_bytes);
    put64(p + 24, h->xxh3_raw);
    put64(p + 32, h->xxh3_stored);
    for (int k = 0; k < SOV_CHUNK_MAX_PLANES; k++) {
        p[40 + k] = h->coding[k];
        put32(p + 48 + 4 * k, h->plane_bytes[k]);
    }
    /* bytes 80..103 reserved (zero) */
    put64(p + 104, XXH3_64bits(p, 104));
}

sov_status sov_chunk_parse_header(const void *bytes, sov_chunk_header *h, const char *where) {
    const uint8_t *p = bytes;
    memset(h, 0, sizeof *h);
    h->magic = get32(p);
    if (h->magic != SOV_CHUNK_MAGIC)
        return sov_fail(SOV_ERR_FORMAT, "%s: not a chunk header (magic %08x)", where, h->magic);
    h->xxh3_header = get64(p + 104);
    if (XXH3_64bits(p, 104) != h->xxh3_header)
        return sov_fail(SOV_ERR_FORMAT, "%s: chunk header checksum mismatch (the header is damaged)", where);
    h->elem_size = p[4], h->planes = p[5], h->transform = p[6], h->reserved = p[7];
    h->raw_bytes = get64(p + 8);
    h->stored_bytes = get64(p + 16);
    h->xxh3_raw = get64(p + 24);
    h->xxh3_stored = get64(p + 32);
    uint64_t sum = 0;
    for (int k = 0; k < SOV_CHUNK_MAX_PLANES; k++) {
        h->coding[k] = p[40 + k];
        h->plane_bytes[k] = get32(p + 48 + 4 * k);
        if (k < h->planes)
            sum += h->plane_bytes[k];
    }
    int shape_ok = (h->elem_size == 1 || h->elem_size == 2 || h->elem_size == 4 || h->elem_size == 8) &&
                   h->transform <= SOV_TRANSFORM_INT &&
                   (h->transform == 0 || h->elem_size > 1) && /* planes need elements of 2 bytes or more */
                   h->planes == (h->transform ? h->elem_size : 1) && h->raw_bytes <= SOV_CHUNK_MAX_RAW &&
                   h->raw_bytes % h->elem_size == 0 && sum == h->stored_bytes;
    for (int k = 0; k < h->planes && shape_ok; k++)
        shape_ok = h->coding[k] <= 3 && (h->coding[k] != 2 || h->transform == SOV_TRANSFORM_FLOAT) && /* pairs: floats' */
                   (h->coding[k] != 0 || h->plane_bytes[k] == h->raw_bytes / h->planes);
    /* one way to write each header: reserved bytes and unused plane entries are zero */
    for (int k = h->planes; k < SOV_CHUNK_MAX_PLANES && shape_ok; k++)
        shape_ok = h->coding[k] == 0 && h->plane_bytes[k] == 0;
    for (int i = 80; i < 104 && shape_ok; i++)
        shape_ok = p[i] == 0;
    shape_ok = shape_ok && h->reserved == 0;
    if (!shape_ok)
        return sov_fail(SOV_ERR_FORMAT, "%s: inconsistent chunk header (element size %u, %u planes, %llu raw bytes, "
                        "%llu stored)", where, h->elem_size, h->planes, (unsigned long long)h->raw_bytes,
                        (unsigned long long)h->stored_bytes);
    return SOV_OK;
}

/* ---- encode ---- */

/* A sample of every plane: SAMPLE_BLOCKS runs of SAMPLE_BLOCK elements spread evenly over the chunk, transformed
 * (the whole chunk when it is small). Plane k's sample is at c->samples + k * SAMPLE_BYTES. */
static size_t gather_samples(sov_codec *c, const uint8_t *raw, size_t count, int elem_size, int transform) {
    uint8_t *s[SOV_CHUNK_MAX_PLANES];
    for (int k = 0; k < elem_size; k++)
        s[k] = c->samples + (size_t)k * SAMPLE_BYTES;
    if (count <= SAMPLE_BYTES) {
        split_at(raw, count, elem_size, transform, s, 0);
        return count;
    }
    size_t stride = count / SAMPLE_BLOCKS;
    for (size_t i = 0; i < SAMPLE_BLOCKS; i++)
        split_at(raw + i * stride * (size_t)elem_size, SAMPLE_BLOCK, elem_size, transform, s, i * SAMPLE_BLOCK);
    return SAMPLE_BYTES;
}

/* Adjacent equal bytes within the sample's runs of SAMPLE_BLOCK, as a fraction of the pairs. */
static double repeat_rate(const uint8_t *smp, size_t len) {
    size_t same = 0, pairs = 0;
    for (size_t at = 0; at < len; at += SAMPLE_BLOCK) {
        size_t n = len - at < SAMPLE_BLOCK ? len - at : SAMPLE_BLOCK;
        for (size_t i = 1; i < n; i++)
            same += smp[at + i] == smp[at + i - 1];
        pairs += n - 1;
    }
    return pairs ? (double)same / (double)pairs : 0.0;
}

enum { CODER_RAW = -1, CODER_LITERAL = 0, CODER_LEVEL1 = 1, CODER_PAIRS = 2, CODER_BITS = 3 };

/* The first of the 15 consecutive byte values that hold most of the histogram; *inside is how many they hold. */
static uint8_t pairs_window(const uint32_t hist[256], size_t *inside) {
    size_t in = 0, best = 0;
    int base = 0;
    for (int b = 0; b < 256; b++) {
        in += hist[b];
        if (b >= PAIRS_ESCAPE)
            in -= hist[b - PAIRS_ESCAPE];
        if (in > best) {
            best = in;
            base = b >= PAIRS_ESCAPE - 1 ? b - (PAIRS_ESCAPE - 1) : 0;
        }
    }
    *inside = best;
    return (uint8_t)base;
}

/* Which coding suits a plane, judged on its sample: raw (near-random, or too little to gain), literals only
 * (Huffman), or level 1, whose matches suit runs of zeros and repeated values as in optimizer moments. Level 1 is
 * tried only when adjacent bytes repeat more often than independent bytes with this histogram would (sum of p^2):
 * for a weight's exponent plane they do not, and the two trial compressions would cost more than the entropy pass.
 * A plane for literals whose sample lies nearly all in one window of 15 values (*base on) is paired first
 * (coding 2). */
static int choose_coder(sov_codec *c, const uint8_t *smp, size_t len, uint8_t *base) {
    if (len < 64)
        return CODER_RAW;
    uint32_t hist[256];
    histogram(smp, len, hist);
    double bits = entropy_of(hist, len);
    if (bits >= NEAR_RANDOM_BITS)
        return CODER_RAW;
    double chance = 0.0;
    for (int b = 0; b < 256; b++)
        chance += ((double)hist[b] / (double)len) * ((double)hist[b] / (double)len);
    if (repeat_rate(smp, len) > REPEAT_EXCESS * chance) {
        size_t lit = ZSTD_compress2(c->literal, c->trial[0], c->trial_cap, smp, len);
        size_t lz = ZSTD_compress2(c->level1, c->trial[1], c->trial_cap, smp, len);
        if (!ZSTD_isError(lit) && !ZSTD_isError(lz) && lz < lit)
            return CODER_LEVEL1;
    }
    if (bits >= HUFFMAN_MIN_GAIN_BITS) {
        uint8_t mask, value;
        sov_bitpack_constant(smp, len, &mask, &value);
        return mask ? CODER_BITS : CODER_RAW;
    }
    size_t inside = 0;
    *base = pairs_window(hist, &inside);
    return len >= PAIRS_MIN_PLANE && len - inside <= len / PAIRS_MAX_OUTSIDE ? CODER_PAIRS : CODER_LITERAL;
}

/* Coding 2 of the plane (n bytes) whose codes and escapes split_to_places left in c->pairs, at out, in less than n
 * bytes: the header, the codes as one zstd frame, then the escapes (a zstd frame when they shrink, else as they
 * are). Returns 0 when that does not shrink the plane. */
static size_t store_pairs(sov_codec *c, size_t n, uint8_t *out) {
    size_t half = (n + 1) / 2, cap = n - 1, nesc = c->pair_escapes;
    const uint8_t *packed = c->pairs, *escapes = c->pairs + half;
    size_t frame = ZSTD_compress2(c->literal, out + PAIRS_HEADER, cap - PAIRS_HEADER, packed, half);
    if (ZSTD_isError(frame))
        return 0;
    size_t at = PAIRS_HEADER + frame, tail = 0;
    out[1] = 0; /* escapes as they are, unless a frame of them (worth trying for more than a few) is smaller */
    if (nesc >= 64) {
        tail = ZSTD_compress2(c->literal, out + at, cap - at < nesc ? cap - at : nesc - 1, escapes, nesc);
        out[1] = !ZSTD_isError(tail);
    }
    if (!out[1]) {
        if (cap - at < nesc)
            return 0;
        memcpy(out + at, escapes, nesc);
        tail = nesc;
    }
    out[0] = c->pair_base;
    out[2] = out[3] = 0;
    put32(out + 4, (uint32_t)nesc);
    put32(out + 8, (uint32_t)frame);
    return at + tail;
}

/* Stores a plane (n bytes at `plane`) at out (room for n bytes): zstd-compressed, paired first or not, when that is
 * smaller, else raw (copied unless it is already there). Returns the stored size; sets *coding. Compressing straight
 * into out with capacity n - 1 also rules out a result that does not shrink. */
static size_t store_plane(sov_codec *c, int coder, uint8_t *plane, size_t n, uint8_t *out, uint8_t *coding) {
    if (coder == CODER_PAIRS) {
        size_t r = store_pairs(c, n, out);
        if (r) {
            *coding = 2;
            return r;
        }
        /* no gain: the plane itself, rebuilt from its codes, goes the literals' way. (Hardly reachable: the sample
         * found at most 1/16 outside the window; it takes a plane that is nearly all escapes elsewhere.) */
        unpack_pairs(c->pairs, n, c->pair_base, c->pairs + (n + 1) / 2, c->pair_escapes, plane);
        coder = CODER_LITERAL;
    }
    if (coder == CODER_BITS) { /* the sample's constant bits, checked on the whole plane */
        uint8_t mask, value;
        sov_bitpack_constant(plane, n, &mask, &value);
        if (mask && sov_bitpack_bytes(n, mask) < n) {
            *coding = 3;
            return sov_bitpack_encode(plane, n, mask, value, out, n);
        }
        coder = CODER_RAW;
    }
    if (coder != CODER_RAW) {
        size_t r = ZSTD_compress2(coder == CODER_LEVEL1 ? c->level1 : c->literal, out, n - 1, plane, n);
        if (!ZSTD_isError(r)) {
            *coding = 1;
            return r;
        }
    }
    *coding = 0;
    if (plane != out)
        memcpy(out, plane, n);
    return n;
}

/* The transform, each plane written where it goes: a plane to be stored raw, with only raw planes before it, goes
 * straight to its place in the payload (for weights that is all but the exponent plane, which saves copying them);
 * the others go to scratch, except a paired last plane, which is paired pass by pass while the pass is in L1 and
 * never written whole. The raw bytes' hash is taken in the same pass, and so is the stored bytes' hash of a first
 * plane stored raw: the payload begins with it (c->stored_hash goes on from there). Returns the raw bytes' hash. */
static uint64_t split_to_places(sov_codec *c, const uint8_t *raw, size_t count, int elem_size, int transform,
                                const int *coder, uint8_t *payload, uint8_t *plane[]) {
    int leading_raw = 1, paired = coder[elem_size - 1] == CODER_PAIRS ? elem_size - 1 : -1;
    for (int k = 0; k < elem_size; k++) {
        leading_raw = leading_raw && coder[k] == CODER_RAW;
        plane[k] = (leading_raw ? payload : c->planes) + (size_t)k * count;
    }
    size_t half = (count + 1) / 2;
    c->pair_escapes = 0;
    sov_xxh3_stream_reset(c->raw_hash);
    if (plane[0] == payload)
        sov_xxh3_stream_reset(c->stored_hash);
    for (size_t at = 0; at < count; at += PASS_ELEMS) { /* at stays even: pairs never straddle two passes */
        size_t n = count - at < PASS_ELEMS ? count - at : PASS_ELEMS;
        const uint8_t *x = raw + at * (size_t)elem_size;
        uint8_t *dst[SOV_CHUNK_MAX_PLANES];
        for (int k = 0; k < elem_size; k++)
            dst[k] = k == paired ? c->pass : plane[k] + at;
        sov_xxh3_stream_update(c->raw_hash, x, n * (size_t)elem_size);
        split_at(x, n, elem_size, transform, dst, 0);
        if (plane[0] == payload)
            sov_xxh3_stream_update(c->stored_hash, dst[0], n);
        if (paired >= 0)
            c->pair_escapes +=
                pack_pairs(c->pass, n, c->pair_base, c->pairs + at / 2, c->pairs + half + c->pair_escapes);
    }
    return sov_xxh3_stream_digest(c->raw_hash);
}

/* The pairing's scratch, allocated when first needed (a codec that only decodes never needs it); without it, a
 * plane goes the literals' way. */
static int pairs_ready(sov_codec *c) {
    if (!c->pairs)
        c->pairs = malloc(c->max_raw);
    if (!c->pass)
        c->pass = malloc(PASS_ELEMS);
    return c->pairs && c->pass;
}

sov_status sov_chunk_encode(sov_codec *c, const void *raw, size_t raw_bytes, int elem_size, int transform, void *out,
                            size_t *out_bytes) {
    int sizes_ok = elem_size == 1 || elem_size == 2 || elem_size == 4 || elem_size == 8;
    if (raw_bytes > c->max_raw || !sizes_ok || raw_bytes % (size_t)elem_size || transform < 0 ||
        transform > SOV_TRANSFORM_INT || (transform != SOV_TRANSFORM_NONE && elem_size == 1))
        return sov_fail(SOV_ERR_INVALID, "checkpoint codec: bad chunk (%zu bytes of %d-byte elements, transform %d, "
                        "limit %zu)", raw_bytes, elem_size, transform, c->max_raw);
    sov_chunk_header h = {.magic = SOV_CHUNK_MAGIC, .elem_size = (uint8_t)elem_size, .raw_bytes = raw_bytes};
    h.transform = (uint8_t)transform;
    h.planes = h.transform ? (uint8_t)elem_size : 1;
    uint8_t *payload = (uint8_t *)out + SOV_CHUNK_HEADER_BYTES;
    size_t plane_n = raw_bytes / h.planes, pos = 0;
    int coder[SOV_CHUNK_MAX_PLANES];
    uint8_t base = 0;
    uint8_t *plane[SOV_CHUNK_MAX_PLANES] = {(uint8_t *)raw};
    if (h.transform) {
        size_t len = gather_samples(c, raw, plane_n, elem_size, transform);
        for (int k = 0; k < h.planes; k++) { /* pairs only for a float's last plane, the exponent's: split_to_places */
            coder[k] = choose_coder(c, c->samples + (size_t)k * SAMPLE_BYTES, len, &base);
            int pairs_fit = k == h.planes - 1 && transform == SOV_TRANSFORM_FLOAT;
            if (coder[k] == CODER_PAIRS && (!pairs_fit || !pairs_ready(c)))
                coder[k] = CODER_LITERAL;
            else if (coder[k] == CODER_PAIRS)
                c->pair_base = base;
        }
        h.xxh3_raw = split_to_places(c, raw, plane_n, elem_size, transform, coder, payload, plane);
    } else {
        h.xxh3_raw = sov_xxh3(raw, raw_bytes);
        /* one-byte elements (u8, i8, bool): judged on the chunk's first bytes */
        coder[0] = choose_coder(c, raw, raw_bytes < SAMPLE_BYTES ? raw_bytes : SAMPLE_BYTES, &base);
        if (coder[0] == CODER_PAIRS) /* pairs are for the planes of a transform */
            coder[0] = CODER_LITERAL;
    }
    for (int k = 0; k < h.planes; k++) {
        size_t s = store_plane(c, coder[k], plane[k], plane_n, payload + pos, &h.coding[k]);
        h.plane_bytes[k] = (uint32_t)s;
        pos += s;
    }
    h.stored_bytes = pos;
    if (plane[0] == payload) { /* the split wrote the first plane in place, and hashed it */
        sov_xxh3_stream_update(c->stored_hash, payload + h.plane_bytes[0], pos - h.plane_bytes[0]);
        h.xxh3_stored = sov_xxh3_stream_digest(c->stored_hash);
    } else {
        h.xxh3_stored = sov_xxh3(payload, pos);
    }
    header_write(&h, out);
    *out_bytes = SOV_CHUNK_HEADER_BYTES + pos;
    return SOV_OK;
}

/* ---- decode ---- */

/* Decodes a plane of coding 2 (`bytes` at p) into dst (n bytes), every size checked against the header's. The
 * packed codes and the escapes are unpacked in `spare`: the chunk's output, which has room for them (a transform
 * has 2 or 4 planes, and the codes take n/2 + 1 bytes, the escapes at most n) and is written only by the join. */
static sov_status load_pairs(sov_codec *c, const uint8_t *p, size_t bytes, uint8_t *spare, uint8_t *dst, size_t n,
                             const char *where, int k) {
    if (bytes < PAIRS_HEADER || p[1] > 1 || p[2] || p[3] || get32(p + 4) > n || get32(p + 8) > bytes - PAIRS_HEADER)
        return sov_fail(SOV_ERR_FORMAT, "%s: plane %d: bad pair-coding header", where, k);
    size_t half = (n + 1) / 2, nesc = get32(p + 4), frame = get32(p + 8), at = PAIRS_HEADER + frame;
    uint8_t *packed = spare, *escapes = spare + half;
    size_t r = ZSTD_decompressDCtx(c->dctx, packed, half, p + PAIRS_HEADER, frame);
    if (ZSTD_isError(r) || r != half)
        return sov_fail(SOV_ERR_FORMAT, "%s: plane %d: its codes do not decompress to %zu bytes (%s)", where, k, half,
                        ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size");
    const uint8_t *esc = p + at;
    if (p[1]) {
        r = ZSTD_decompressDCtx(c->dctx, escapes, nesc, p + at, bytes - at);
        esc = escapes;
    } else {
        r = bytes - at;
    }
    if (ZSTD_isError(r) || r != nesc)
        return sov_fail(SOV_ERR_FORMAT, "%s: plane %d: its escapes are not the %zu bytes the header says (%s)", where,
                        k, nesc, ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size");
    if (unpack_pairs(packed, n, p[0], esc, nesc, dst) != nesc || (n % 2 && packed[half - 1] >> 4))
        return sov_fail(SOV_ERR_FORMAT, "%s: plane %d: its codes do not match its %zu escapes", where, k, nesc);
    return SOV_OK;
}

/* The inverse transform, pass by pass, each pass's output hashed while it is in L1. Returns the raw bytes' hash. */
static uint64_t join_hashed(sov_codec *c, const uint8_t *const plane[], size_t count, int elem_size, int transform,
                            uint8_t *raw) {
    sov_xxh3_stream_reset(c->raw_hash);
    for (size_t at = 0; at < count; at += PASS_ELEMS) {
        size_t n = count - at < PASS_ELEMS ? count - at : PASS_ELEMS;
        const uint8_t *from[SOV_CHUNK_MAX_PLANES];
        for (int k = 0; k < elem_size; k++)
            from[k] = plane[k] + at;
        uint8_t *out = raw + at * (size_t)elem_size;
        planes_join(from, n, elem_size, transform, out);
        sov_xxh3_stream_update(c->raw_hash, out, n * (size_t)elem_size);
    }
    return sov_xxh3_stream_digest(c->raw_hash);
}

/* authenticated: the payload's bytes were authenticated already (AES-GCM), which its checksum adds nothing to. */
static sov_status decode(sov_codec *c, const void *chunk, size_t bytes, void *raw, size_t raw_cap, size_t *raw_bytes,
                         const char *where, int authenticated) {
    if (bytes < SOV_CHUNK_HEADER_BYTES)
        return sov_fail(SOV_ERR_FORMAT, "%s: truncated chunk (%zu bytes, the header alone is %d)", where, bytes,
                        SOV_CHUNK_HEADER_BYTES);
    sov_chunk_header h;
    SOV_CHECK(sov_chunk_parse_header(chunk, &h, where));
    const uint8_t *payload = (const uint8_t *)chunk + SOV_CHUNK_HEADER_BYTES;
    if (h.stored_bytes != bytes - SOV_CHUNK_HEADER_BYTES)
        return sov_fail(SOV_ERR_FORMAT, "%s: chunk payload is %zu bytes, its header says %llu", where,
                        bytes - SOV_CHUNK_HEADER_BYTES, (unsigned long long)h.stored_bytes);
    if (h.raw_bytes > raw_cap || h.raw_bytes > c->max_raw)
        return sov_fail(SOV_ERR_FORMAT, "%s: chunk of %llu raw bytes exceeds the %zu expected", where,
                        (unsigned long long)h.raw_bytes, raw_cap < c->max_raw ? raw_cap : c->max_raw);
    if (!authenticated && sov_xxh3(payload, h.stored_bytes) != h.xxh3_stored)
        return sov_fail(SOV_ERR_FORMAT, "%s: stored-bytes checksum mismatch (the chunk's data is damaged)", where);
    /* Planes stored raw are joined from where they lie in the payload; compressed ones are decompressed first (into
     * scratch, or straight into raw when there is no transform). */
    uint8_t *scratch = h.transform ? c->planes : raw;
    const uint8_t *plane[SOV_CHUNK_MAX_PLANES];
    size_t plane_n = h.raw_bytes / h.planes, pos = 0;
    for (int k = 0; k < h.planes; k++) {
        uint8_t *dst = scratch + (size_t)k * plane_n;
        if (h.coding[k] == 0) {
            plane[k] = payload + pos;
            if (!h.transform)
                memcpy(dst, payload + pos, plane_n);
        } else if (h.coding[k] == 3) {
            SOV_CHECK(sov_bitpack_decode(payload + pos, h.plane_bytes[k], dst, plane_n, where, k));
            plane[k] = dst;
        } else if (h.coding[k] == 2) {
            SOV_CHECK(load_pairs(c, payload + pos, h.plane_bytes[k], raw, dst, plane_n, where, k));
            plane[k] = dst;
        } else {
            size_t r = ZSTD_decompressDCtx(c->dctx, dst, plane_n, payload + pos, h.plane_bytes[k]);
            if (ZSTD_isError(r) || r != plane_n)
                return sov_fail(SOV_ERR_FORMAT, "%s: plane %d does not decompress to %zu bytes (%s)", where, k,
                                plane_n, ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size");
            plane[k] = dst;
        }
        pos += h.plane_bytes[k];
    }
    uint64_t raw_hash = h.transform ? join_hashed(c, plane, h.raw_bytes / h.elem_size, h.elem_size, h.transform, raw)
                                    : sov_xxh3(raw, h.raw_bytes);
    if (raw_hash != h.xxh3_raw)
        return sov_fail(SOV_ERR_FORMAT, "%s: raw-bytes checksum mismatch after decoding", where);
    *raw_bytes = h.raw_bytes;
    return SOV_OK;
}

sov_status sov_chunk_decode(sov_codec *c, const void *chunk, size_t bytes, void *raw, size_t raw_cap,
                            size_t *raw_bytes, const char *where) {
    return decode(c, chunk, bytes, raw, raw_cap, raw_bytes, where, 0);
}

sov_status sov_chunk_decode_authenticated(sov_codec *c, const void *chunk, size_t bytes, void *raw, size_t raw_cap,
                                          size_t *raw_bytes, const char *where) {
    return decode(c, chunk, bytes, raw, raw_cap, raw_bytes, where, 1);
}
