/* bitpack.c: see bitpack.h. With BMI2 (x86-64 since Haswell and Zen) eight bytes are packed or unpacked by one
 * pext or pdep; elsewhere byte by byte through a bit accumulator, with the same result. */
#include "bitpack.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SOV_HAVE_BMI2_PATH 1
#endif

void sov_bitpack_constant(const uint8_t *plane, size_t n, uint8_t *mask, uint8_t *value) {
    uint8_t all = 0xff, any = 0;
    for (size_t i = 0; i < n; i++) {
        all &= plane[i];
        any |= plane[i];
    }
    *mask = n ? (uint8_t)~(all ^ any) : 0;
    *value = all & *mask;
}

static int free_bits(uint8_t mask) { return 8 - __builtin_popcount(mask); }

size_t sov_bitpack_bytes(size_t n, uint8_t mask) {
    return SOV_BITPACK_HEADER + (n * (size_t)free_bits(mask) + 7) / 8;
}

static uint64_t repeat(uint8_t b) { return 0x0101010101010101ull * b; }

/* Bytes [from, n) one at a time: their free bits appended at stream bit from * k. */
static void pack_tail(const uint8_t *plane, size_t from, size_t n, uint8_t mask, uint8_t *out) {
    int k = free_bits(mask);
    size_t bit = from * (size_t)k;
    for (size_t i = from; i < n; i++)
        for (int b = 0; b < 8; b++) {
            if (mask >> b & 1)
                continue;
            if (plane[i] >> b & 1)
                out[bit / 8] |= (uint8_t)(1u << (bit % 8));
            bit++;
        }
}

static void unpack_tail(const uint8_t *in, size_t from, size_t n, uint8_t mask, uint8_t value, uint8_t *dst) {
    int k = free_bits(mask);
    size_t bit = from * (size_t)k;
    for (size_t i = from; i < n; i++) {
        uint8_t x = value;
        for (int b = 0; b < 8; b++)
            if (!(mask >> b & 1)) {
                x |= (uint8_t)((in[bit / 8] >> (bit % 8) & 1) << b);
                bit++;
            }
        dst[i] = x;
    }
}

#ifdef SOV_HAVE_BMI2_PATH
/* Groups of 8 bytes: k bytes each. Each store writes 8 bytes, of which the next group's overwrites the extra. */
__attribute__((target("bmi2"))) static size_t pack_groups(const uint8_t *plane, size_t n, uint8_t mask,
                                                         uint8_t *out) {
    uint64_t keep = ~repeat(mask);
    int k = free_bits(mask);
    size_t g = 0;
    for (; g + 8 <= n; g += 8) {
        uint64_t x, packed;
        memcpy(&x, plane + g, 8);
        packed = _pext_u64(x, keep);
        memcpy(out + g / 8 * (size_t)k, &packed, 8);
    }
    return g;
}

__attribute__((target("bmi2"))) static size_t unpack_groups(const uint8_t *in, size_t bytes, size_t n, uint8_t mask,
                                                           uint8_t value, uint8_t *dst) {
    uint64_t keep = ~repeat(mask), fixed = repeat(value);
    int k = free_bits(mask);
    size_t g = 0;
    for (; g + 8 <= n && g / 8 * (size_t)k + 8 <= bytes; g += 8) { /* whole 8-byte loads only inside the input */
        uint64_t packed, x;
        memcpy(&packed, in + g / 8 * (size_t)k, 8);
        x = _pdep_u64(packed, keep) | fixed;
        memcpy(dst + g, &x, 8);
    }
    return g;
}

static int have_bmi2(void) { return __builtin_cpu_supports("bmi2"); }
#else
static size_t pack_groups(const uint8_t *p, size_t n, uint8_t m, uint8_t *o) { (void)p, (void)n, (void)m, (void)o; return 0; }
static size_t unpack_groups(const uint8_t *i, size_t b, size_t n, uint8_t m, uint8_t v, uint8_t *d) {
    (void)i, (void)b, (void)n, (void)m, (void)v, (void)d;
    return 0;
}
static int have_bmi2(void) { return 0; }
#endif

size_t sov_bitpack_encode(const uint8_t *plane, size_t n, uint8_t mask, uint8_t value, uint8_t *out, size_t cap) {
    size_t bytes = sov_bitpack_bytes(n, mask);
    uint8_t *packed = out + SOV_BITPACK_HEADER;
    out[0] = mask, out[1] = value, out[2] = out[3] = 0;
    /* the groups' 8-byte stores reach up to 7 bytes past the packed bits: only with that much room */
    size_t done = have_bmi2() && bytes + 8 <= cap ? pack_groups(plane, n, mask, packed) : 0;
    size_t written = done / 8 * (size_t)free_bits(mask);
    memset(packed + written, 0, bytes - SOV_BITPACK_HEADER - written);
    pack_tail(plane, done, n, mask, packed);
    return bytes;
}

sov_status sov_bitpack_decode(const uint8_t *in, size_t bytes, uint8_t *dst, size_t n, const char *where, int k) {
    uint8_t mask = bytes >= SOV_BITPACK_HEADER ? in[0] : 0, value = bytes >= SOV_BITPACK_HEADER ? in[1] : 0;
    if (bytes < SOV_BITPACK_HEADER || mask == 0 || mask == 0xff || (value & ~mask) || in[2] || in[3] ||
        bytes != sov_bitpack_bytes(n, mask))
        return sov_fail(SOV_ERR_FORMAT, "%s: plane %d: bad bit-packing header or size", where, k);
    size_t bits = n * (size_t)free_bits(mask), packed = bytes - SOV_BITPACK_HEADER;
    if (bits % 8 && in[SOV_BITPACK_HEADER + packed - 1] >> (bits % 8))
        return sov_fail(SOV_ERR_FORMAT, "%s: plane %d: the unused bits of its last packed byte are not zero", where,
                        k);
    size_t done = have_bmi2() ? unpack_groups(in + SOV_BITPACK_HEADER, packed, n, mask, value, dst) : 0;
    unpack_tail(in + SOV_BITPACK_HEADER, done, n, mask, value, dst);
    return SOV_OK;
}
