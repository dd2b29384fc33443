/* xxh3_avx2.c: XXH3-64 built for AVX2 (this file alone is compiled with -mavx2; see checksum.h). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <stddef.h>
#include <stdint.h>

uint64_t sov_xxh3_avx2(const void *data, size_t bytes);

uint64_t sov_xxh3_avx2(const void *data, size_t bytes) { return XXH3_64bits(data, bytes); }
