/* codec.c: see codec.h. */
#include "codec.h"
#include "checksum.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_c_literalCompressionMode */
#include <zstd.h>

#define RAW_ENTROPY_BITS 7.9 /* above this a plane is near-random: compressing it costs time and gains < 1.3 % */
#define SAMPLE_BLOCKS 16
#define SAMPLE_BLOCK 4096 /* elements */
#define SAMPLE_BYTES (SAMPLE_BLOCKS * SAMPLE_BLOCK) /* decisions are taken on a sample of each plane */
#define REPEAT_EXCESS 1.25 /* adjacent repeats this far above chance: the plane has runs for LZ matches to find */

struct sov_codec {
    size_t max_raw;
    uint8_t *planes;     /* max_raw: transformed planes on their way to the compressor (see split_to_places) */
    uint8_t *trial[2];   /* zstd outputs of the two parameter sets, on a sample */
    uint8_t *samples;    /* SAMPLE_BYTES of each plane, SOV_CHUNK_MAX_PLANES planes */
    sov_xxh3_stream *raw_hash;
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
    c->literal = ZSTD_createCCtx();
    c->level1 = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    if (!c->planes || !c->trial[0] || !c->trial[1] || !c->samples || !c->raw_hash || !c->literal || !c->level1 || !c->dctx) {
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
    sov_xxh3_stream_free(c->raw_hash);
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

/* The transform of count elements into planes, each written from element `at` of its plane on. */
static void split_at(const void *raw, size_t count, int elem_size, uint8_t *const plane[], size_t at) {
    if (elem_size == 4)
        split4(raw, count, plane[0] + at, plane[1] + at, plane[2] + at, plane[3] + at);
    else
        split2(raw, count, plane[0] + at, plane[1] + at);
}

void sov_planes_split(const void *raw, size_t count, int elem_size, uint8_t *planes) {
    uint8_t *plane[SOV_CHUNK_MAX_PLANES];
    for (int k = 0; k < elem_size; k++)
        plane[k] = planes + (size_t)k * count;
    split_at(raw, count, elem_size, plane, 0);
}

static void planes_join(const uint8_t *const plane[], size_t count, int elem_size, void *raw) {
    if (elem_size == 4)
        join4(plane[0], plane[1], plane[2], plane[3], count, raw);
    else
        join2(plane[0], plane[1], count, raw);
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
    int shape_ok = (h->elem_size == 1 || h->elem_size == 2 || h->elem_size == 4) && h->transform <= 1 &&
                   (h->transform == 0 || h->elem_size > 1) && /* the planes transform needs 2- or 4-byte elements */
                   h->planes == (h->transform ? h->elem_size : 1) && h->raw_bytes <= SOV_CHUNK_MAX_RAW &&
                   h->raw_bytes % h->elem_size == 0 && sum == h->stored_bytes;
    for (int k = 0; k < h->planes && shape_ok; k++)
        shape_ok = h->coding[k] <= 1 &&
                   (h->coding[k] == 1 || h->plane_bytes[k] == h->raw_bytes / h->planes);
    if (!shape_ok)
        return sov_fail(SOV_ERR_FORMAT, "%s: inconsistent chunk header (element size %u, %u planes, %llu raw bytes, "
                        "%llu stored)", where, h->elem_size, h->planes, (unsigned long long)h->raw_bytes,
                        (unsigned long long)h->stored_bytes);
    return SOV_OK;
}

/* ---- encode ---- */

/* A sample of every plane: SAMPLE_BLOCKS runs of SAMPLE_BLOCK elements spread evenly over the chunk, transformed
 * (the whole chunk when it is small). Plane k's sample is at c->samples + k * SAMPLE_BYTES. */
static size_t gather_samples(sov_codec *c, const uint8_t *raw, size_t count, int elem_size) {
    uint8_t *s[SOV_CHUNK_MAX_PLANES];
    for (int k = 0; k < elem_size; k++)
        s[k] = c->samples + (size_t)k * SAMPLE_BYTES;
    if (count <= SAMPLE_BYTES) {
        split_at(raw, count, elem_size, s, 0);
        return count;
    }
    size_t stride = count / SAMPLE_BLOCKS;
    for (size_t i = 0; i < SAMPLE_BLOCKS; i++)
        split_at(raw + i * stride * (size_t)elem_size, SAMPLE_BLOCK, elem_size, s, i * SAMPLE_BLOCK);
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

enum { CODER_RAW = -1, CODER_LITERAL = 0, CODER_LEVEL1 = 1 };

/* Which coding suits a plane, judged on its sample: raw (near-random), literals only (Huffman), or level 1, whose
 * matches suit runs of zeros and repeated values as in optimizer moments. Level 1 is tried only when adjacent bytes
 * repeat more often than independent bytes with this histogram would (sum of p^2): for a weight's exponent plane
 * they do not, and the two trial compressions would cost more than the entropy pass. */
static int choose_coder(sov_codec *c, const uint8_t *smp, size_t len) {
    if (len < 64)
        return CODER_RAW;
    uint32_t hist[256];
    histogram(smp, len, hist);
    if (entropy_of(hist, len) >= RAW_ENTROPY_BITS)
        return CODER_RAW;
    double chance = 0.0;
    for (int b = 0; b < 256; b++)
        chance += ((double)hist[b] / (double)len) * ((double)hist[b] / (double)len);
    if (repeat_rate(smp, len) <= REPEAT_EXCESS * chance)
        return CODER_LITERAL;
    size_t lit = ZSTD_compress2(c->literal, c->trial[0], c->trial_cap, smp, len);
    size_t lz = ZSTD_compress2(c->level1, c->trial[1], c->trial_cap, smp, len);
    if (ZSTD_isError(lit) || ZSTD_isError(lz))
        return CODER_LITERAL;
    return lz < lit ? CODER_LEVEL1 : CODER_LITERAL;
}

/* Stores a plane (n bytes at `plane`) at out (room for n bytes): zstd-compressed when that is smaller, else raw
 * (copied unless it is already there). Returns the stored size; sets *coding. Compressing straight into out with
 * capacity n - 1 also rules out a result that does not shrink. */
static size_t store_plane(sov_codec *c, int coder, const uint8_t *plane, size_t n, uint8_t *out, uint8_t *coding) {
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

#define PASS_ELEMS 8192 /* the transform's step: a block read from memory once, hashed and split while in L1 */

/* The transform, each plane written where it goes: a plane to be stored raw, with only raw planes before it, goes
 * straight to its place in the payload (for weights that is all but the exponent plane, which saves copying them);
 * the others go to scratch. The raw bytes' hash is taken in the same pass. Returns that hash. */
static uint64_t split_to_places(sov_codec *c, const uint8_t *raw, size_t count, int elem_size, const int *coder,
                                uint8_t *payload, uint8_t *plane[]) {
    int leading_raw = 1;
    for (int k = 0; k < elem_size; k++) {
        leading_raw = leading_raw && coder[k] == CODER_RAW;
        plane[k] = (leading_raw ? payload : c->planes) + (size_t)k * count;
    }
    sov_xxh3_stream_reset(c->raw_hash);
    for (size_t at = 0; at < count; at += PASS_ELEMS) {
        size_t n = count - at < PASS_ELEMS ? count - at : PASS_ELEMS;
        const uint8_t *x = raw + at * (size_t)elem_size;
        sov_xxh3_stream_update(c->raw_hash, x, n * (size_t)elem_size);
        split_at(x, n, elem_size, plane, at);
    }
    return sov_xxh3_stream_digest(c->raw_hash);
}

sov_status sov_chunk_encode(sov_codec *c, const void *raw, size_t raw_bytes, int elem_size, void *out,
                            size_t *out_bytes) {
    if (raw_bytes > c->max_raw || (elem_size != 1 && elem_size != 2 && elem_size != 4) || raw_bytes % (size_t)elem_size)
        return sov_fail(SOV_ERR_INVALID, "checkpoint codec: bad chunk (%zu bytes of %d-byte elements, limit %zu)",
                        raw_bytes, elem_size, c->max_raw);
    sov_chunk_header h = {.magic = SOV_CHUNK_MAGIC, .elem_size = (uint8_t)elem_size, .raw_bytes = raw_bytes};
    h.transform = elem_size > 1;
    h.planes = h.transform ? (uint8_t)elem_size : 1;
    uint8_t *payload = (uint8_t *)out + SOV_CHUNK_HEADER_BYTES;
    size_t plane_n = raw_bytes / h.planes, pos = 0;
    int coder[SOV_CHUNK_MAX_PLANES];
    uint8_t *plane[SOV_CHUNK_MAX_PLANES] = {(uint8_t *)raw};
    if (h.transform) {
        size_t len = gather_samples(c, raw, plane_n, elem_size);
        for (int k = 0; k < h.planes; k++)
            coder[k] = choose_coder(c, c->samples + (size_t)k * SAMPLE_BYTES, len);
        h.xxh3_raw = split_to_places(c, raw, plane_n, elem_size, coder, payload, plane);
    } else {
        h.xxh3_raw = sov_xxh3(raw, raw_bytes);
        /* bytes without a transform (no checkpoint buffer holds them): judged on the chunk's first bytes */
        coder[0] = choose_coder(c, raw, raw_bytes < SAMPLE_BYTES ? raw_bytes : SAMPLE_BYTES);
    }
    for (int k = 0; k < h.planes; k++) {
        size_t s = store_plane(c, coder[k], plane[k], plane_n, payload + pos, &h.coding[k]);
        h.plane_bytes[k] = (uint32_t)s;
        pos += s;
    }
    h.stored_bytes = pos;
    h.xxh3_stored = sov_xxh3(payload, pos);
    header_write(&h, out);
    *out_bytes = SOV_CHUNK_HEADER_BYTES + pos;
    return SOV_OK;
}

/* ---- decode ---- */

sov_status sov_chunk_decode(sov_codec *c, const void *chunk, size_t bytes, void *raw, size_t raw_cap,
                            size_t *raw_bytes, const char *where) {
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
    if (sov_xxh3(payload, h.stored_bytes) != h.xxh3_stored)
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
        } else {
            size_t r = ZSTD_decompressDCtx(c->dctx, dst, plane_n, payload + pos, h.plane_bytes[k]);
            if (ZSTD_isError(r) || r != plane_n)
                return sov_fail(SOV_ERR_FORMAT, "%s: plane %d does not decompress to %zu bytes (%s)", where, k,
                                plane_n, ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong size");
            plane[k] = dst;
        }
        pos += h.plane_bytes[k];
    }
    if (h.transform)
        planes_join(plane, h.raw_bytes / h.elem_size, h.elem_size, raw);
    if (sov_xxh3(raw, h.raw_bytes) != h.xxh3_raw)
        return sov_fail(SOV_ERR_FORMAT, "%s: raw-bytes checksum mismatch after decoding", where);
    *raw_bytes = h.raw_bytes;
    return SOV_OK;
}
