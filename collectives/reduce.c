/* reduce.c: element-wise reductions in rank order, shared by the shm, MPI (bf16/f16) and hier backends.
 * The order is fixed (((in0 op in1) op in2) ...), so whoever computes an element gets the same bits. */
#include "comm_internal.h"

#include <string.h>

#define BLOCK 1024 /* elements per block: the f32 accumulator of a block stays in L1 */

/* The bf16 conversions are inlined into the loops below, which GCC then vectorises (a call per element, through a
 * pointer, held a bf16 reduction to ~1 GB/s). */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float sov_bf16_to_f32(uint16_t h) { return bf16_to_f32(h); }
uint16_t sov_f32_to_bf16(float f) { return f32_to_bf16(f); }

float sov_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) { /* inf / NaN */
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sov_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00 | ((abs >> 13) & 0x3ff));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00);
    if (abs < 0x38800000u) { /* below the smallest normal: subnormal or zero, rounded to nearest even */
        if (abs < 0x33000000u)
            return (uint16_t)sign;
        uint32_t man = (abs & 0x7fffff) | 0x800000, shift = 126 - (abs >> 23);
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1), q = man >> shift;
        if (rest > half || (rest == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u); /* round to nearest even on the 13 dropped bits */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

static void reduce_f32(float *out, const void *const *in, int n, size_t count, sov_redop op, int divisor) {
    const float *a = in[0];
    const float inv_is_div = (float)divisor;
    for (size_t b = 0; b < count; b += BLOCK) {
        size_t m = count - b < BLOCK ? count - b : BLOCK;
        float acc[BLOCK];
        memcpy(acc, a + b, m * sizeof(float));
        for (int k = 1; k < n; k++) {
            const float *x = (const float *)in[k] + b;
            if (op == SOV_MAX)
                for (size_t i = 0; i < m; i++)
                    acc[i] = x[i] > acc[i] ? x[i] : acc[i];
            else
                for (size_t i = 0; i < m; i++)
                    acc[i] += x[i];
        }
        if (divisor > 1)
            for (size_t i = 0; i < m; i++)
                acc[i] /= inv_is_div;
        memcpy(out + b, acc, m * sizeof(float));
    }
}

static void reduce_f64(double *out, const void *const *in, int n, size_t count, sov_redop op, int divisor) {
    for (size_t b = 0; b < count; b += BLOCK) {
        size_t m = count - b < BLOCK ? count - b : BLOCK;
        double acc[BLOCK];
        memcpy(acc, (const double *)in[0] + b, m * sizeof(double));
        for (int k = 1; k < n; k++) {
            const double *x = (const double *)in[k] + b;
            for (size_t i = 0; i < m; i++)
                acc[i] = op == SOV_MAX ? (x[i] > acc[i] ? x[i] : acc[i]) : acc[i] + x[i];
        }
        if (divisor > 1)
            for (size_t i = 0; i < m; i++)
                acc[i] /= (double)divisor;
        memcpy(out + b, acc, m * sizeof(double));
    }
}

void sov_widen_half(float *dst, const uint16_t *src, size_t n, sov_dtype dt) {
    if (dt == SOV_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = bf16_to_f32(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = sov_f16_to_f32(src[i]);
}

void sov_narrow_half(uint16_t *dst, const float *src, size_t n, sov_dtype dt) {
    if (dt == SOV_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = f32_to_bf16(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = sov_f32_to_f16(src[i]);
}

/* bf16 and f16: widen to f32, reduce, divide, round once. */
static void reduce_half(uint16_t *out, const void *const *in, int n, size_t count, sov_redop op, int divisor,
                        sov_dtype dt) {
    for (size_t b = 0; b < count; b += BLOCK) {
        size_t m = count - b < BLOCK ? count - b : BLOCK;
        float acc[BLOCK], v[BLOCK];
        sov_widen_half(acc, (const uint16_t *)in[0] + b, m, dt);
        for (int k = 1; k < n; k++) {
            sov_widen_half(v, (const uint16_t *)in[k] + b, m, dt);
            if (op == SOV_MAX)
                for (size_t i = 0; i < m; i++)
                    acc[i] = v[i] > acc[i] ? v[i] : acc[i];
            else
                for (size_t i = 0; i < m; i++)
                    acc[i] += v[i];
        }
        if (divisor > 1)
            for (size_t i = 0; i < m; i++)
                acc[i] /= (float)divisor;
        sov_narrow_half(out + b, acc, m, dt);
    }
}

static void reduce_u8(uint8_t *out, const void *const *in, int n, size_t count) {
    for (size_t i = 0; i < count; i++) {
        uint8_t acc = ((const uint8_t *)in[0])[i];
        for (int k = 1; k < n; k++)
            acc = (uint8_t)(acc + ((const uint8_t *)in[k])[i]);
        out[i] = acc;
    }
}

void sov_reduce(void *out, const void *const *in, int n_in, size_t count, sov_dtype dt, sov_redop op,
                int divisor) {
    if (op != SOV_AVG)
        divisor = 1;
    switch (dt) {
    case SOV_F32: reduce_f32(out, in, n_in, count, op, divisor); break;
    case SOV_F64: reduce_f64(out, in, n_in, count, op, divisor); break;
    case SOV_BF16:
    case SOV_F16: reduce_half(out, in, n_in, count, op, divisor, dt); break;
    case SOV_U8: reduce_u8(out, in, n_in, count); break;
    default: break; /* comm.c refuses the other types before any backend sees them */
    }
}
