/* checksum.c: see checksum.h. */
#include "checksum.h"

#include <xxhash.h>

static uint64_t one_shot_base(const void *data, size_t bytes) { return XXH3_64bits(data, bytes); }
static void update_base(void *state, const void *data, size_t bytes) { XXH3_64bits_update(state, data, bytes); }
static uint64_t digest_base(const void *state) { return XXH3_64bits_digest(state); }

static uint64_t (*one_shot)(const void *, size_t) = one_shot_base;
static void (*update)(void *, const void *, size_t) = update_base;
static uint64_t (*digest)(const void *) = digest_base;

#ifdef SOV_XXH3_AVX2
uint64_t sov_xxh3_avx2(const void *data, size_t bytes); /* xxh3_avx2.c */
void sov_xxh3_update_avx2(void *state, const void *data, size_t bytes);
uint64_t sov_xxh3_digest_avx2(const void *state);

/* The streaming state is made by the library and updated by the header's code: both must be one version (Debian
 * ships them together; anything else keeps the library's code). */
__attribute__((constructor)) static void choose_xxh3(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && XXH_versionNumber() == XXH_VERSION_NUMBER) {
        one_shot = sov_xxh3_avx2;
        update = sov_xxh3_update_avx2;
        digest = sov_xxh3_digest_avx2;
    }
}
#endif

uint64_t sov_xxh3(const void *data, size_t bytes) { return one_shot(data, bytes); }

sov_xxh3_stream *sov_xxh3_stream_create(void) {
    XXH3_state_t *s = XXH3_createState();
    if (s)
        XXH3_64bits_reset(s);
    return (sov_xxh3_stream *)s;
}

void sov_xxh3_stream_free(sov_xxh3_stream *s) { XXH3_freeState((XXH3_state_t *)s); }
void sov_xxh3_stream_reset(sov_xxh3_stream *s) { XXH3_64bits_reset((XXH3_state_t *)s); }
void sov_xxh3_stream_update(sov_xxh3_stream *s, const void *data, size_t bytes) { update(s, data, bytes); }
uint64_t sov_xxh3_stream_digest(const sov_xxh3_stream *s) { return digest(s); }
