/* copy.c: see copy.h. */
#include "copy.h"

#include <stdint.h>
#include <string.h>

#define STREAM_MIN ((size_t)1 << 20) /* below: the copy fits the caches, and their stores are cheap */

#if defined(__x86_64__)
#include <immintrin.h>

/* The copy goes through GROUP bytes at a time: one cache line from each of its four 4 KiB strides in turn, the way
 * glibc's own large copies go (large_memcpy_4x), which keeps four streams of reads open for the prefetchers. */
#define STRIDE ((size_t)4096)
#define GROUP (4 * STRIDE)

/* n is a multiple of GROUP and d is 64-byte aligned: whole cache lines, each written by full stores. */
__attribute__((target("avx2"))) static void stream_avx2(uint8_t *d, const uint8_t *s, size_t n) {
    for (size_t g = 0; g < n; g += GROUP)
        for (size_t line = g; line < g + STRIDE; line += 64)
            for (size_t i = line; i < g + GROUP; i += STRIDE) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
                __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
                _mm256_stream_si256((__m256i *)(d + i), a);
                _mm256_stream_si256((__m256i *)(d + i + 32), b);
            }
}

static void stream_sse2(uint8_t *d, const uint8_t *s, size_t n) {
    for (size_t g = 0; g < n; g += GROUP)
        for (size_t line = g; line < g + STRIDE; line += 64)
            for (size_t i = line; i < g + GROUP; i += STRIDE)
                for (size_t k = i; k < i + 64; k += 16)
                    _mm_stream_si128((__m128i *)(d + k), _mm_loadu_si128((const __m128i *)(s + k)));
}

static int has_avx2;
__attribute__((constructor)) static void choose_stream(void) {
    __builtin_cpu_init();
    has_avx2 = __builtin_cpu_supports("avx2");
}

void sov_copy_to_staging(void *dst, const void *src, size_t n) {
    if (n < STREAM_MIN) {
        memcpy(dst, src, n);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (64 - ((uintptr_t)d & 63)) & 63, body = (n - head) & ~(GROUP - 1);
    memcpy(d, s, head);
    (has_avx2 ? stream_avx2 : stream_sse2)(d + head, s + head, body);
    _mm_sfence(); /* streaming stores are weakly ordered: make them visible before the snapshot says so */
    memcpy(d + head + body, s + head + body, n - head - body);
}
#else
void sov_copy_to_staging(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
#endif
