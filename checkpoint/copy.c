/* copy.c: see copy.h. */
#include "copy.h"

#include <stdint.h>
#include <string.h>

#define STREAM_MIN ((size_t)1 << 20)  /* below: the copy fits the caches, and their stores are cheap */
#define STREAM_MAX ((size_t)16 << 20) /* from here glibc streams by itself */

#if defined(__x86_64__)
#include <immintrin.h>

/* n is a multiple of 128 and d is 64-byte aligned: whole cache lines, each written by full stores. */
__attribute__((target("avx2"))) static void stream_avx2(uint8_t *d, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
        _mm256_stream_si256((__m256i *)(d + i), a);
        _mm256_stream_si256((__m256i *)(d + i + 32), b);
        _mm256_stream_si256((__m256i *)(d + i + 64), c);
        _mm256_stream_si256((__m256i *)(d + i + 96), e);
    }
}

static void stream_sse2(uint8_t *d, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_stream_si128((__m128i *)(d + i), a);
        _mm_stream_si128((__m128i *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(d + i + 48), e);
    }
}

static int has_avx2;
__attribute__((constructor)) static void choose_stream(void) {
    __builtin_cpu_init();
    has_avx2 = __builtin_cpu_supports("avx2");
}

void sov_copy_to_staging(void *dst, const void *src, size_t n) {
    if (n < STREAM_MIN || n >= STREAM_MAX) {
        memcpy(dst, src, n);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (64 - ((uintptr_t)d & 63)) & 63, body = (n - head) & ~(size_t)127;
    memcpy(d, s, head);
    (has_avx2 ? stream_avx2 : stream_sse2)(d + head, s + head, body);
    _mm_sfence(); /* streaming stores are weakly ordered: make them visible before the snapshot says so */
    memcpy(d + head + body, s + head + body, n - head - body);
}
#else
void sov_copy_to_staging(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
#endif
