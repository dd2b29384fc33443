/* xxh3_avx2.c: XXH3-64 built for AVX2 (this file alone is compiled with -mavx2; see checksum.h). The streaming
 * state has the same layout whatever the vector width, so states made by libxxhash are updated here. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <stddef.h>
#include <stdint.h>

uint64_t sov_xxh3_avx2(const void *data, size_t bytes);
void sov_xxh3_update_avx2(void *state, const void *data, size_t bytes);
uint64_t sov_xxh3_digest_avx2(const void *state);

uint64_t sov_xxh3_avx2(const void *data, size_t bytes) { return XXH3_64bits(data, bytes); }
void sov_xxh3_update_avx2(void *state, const void *data, size_t bytes) { XXH3_64bits_update(state, data, bytes); }
uint64_t sov_xxh3_digest_avx2(const void *state) { return XXH3_64bits_digest(state); }
