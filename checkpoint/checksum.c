/* checksum.c: see checksum.h. */
#include "checksum.h"

#include <xxhash.h>

#ifdef SOV_XXH3_AVX2
uint64_t sov_xxh3_avx2(const void *data, size_t bytes); /* xxh3_avx2.c */

static uint64_t (*xxh3_impl)(const void *, size_t) = XXH3_64bits;

__attribute__((constructor)) static void choose_xxh3(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        xxh3_impl = sov_xxh3_avx2;
}

uint64_t sov_xxh3(const void *data, size_t bytes) { return xxh3_impl(data, bytes); }
#else
uint64_t sov_xxh3(const void *data, size_t bytes) { return XXH3_64bits(data, bytes); }
#endif
