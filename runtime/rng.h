/* rng.h (internal): a small, fast, seedable generator (xoshiro256**, seeded through splitmix64).
 * Its whole state is four words, so a checkpoint can store it and resume the exact stream. */
#ifndef SOV_RNG_H
#define SOV_RNG_H

#include <stdint.h>

typedef struct sov_rng {
    uint64_t s[4];
} sov_rng;

/* Seeds from a seed and a stream id (e.g. epoch), so independent streams never overlap in practice. */
void sov_rng_seed(sov_rng *rng, uint64_t seed, uint64_t stream);
uint64_t sov_rng_next(sov_rng *rng);
/* Uniform in [0, n) without modulo bias. */
uint64_t sov_rng_below(sov_rng *rng, uint64_t n);
/* Uniform float in [0, 1). */
float sov_rng_uniform(sov_rng *rng);

#endif
