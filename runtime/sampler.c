/* sampler.c: the global sample order, identical on every rank and independent of the world size. */
#include "data.h"
#include "rng.h"

#include <stdlib.h>

sov_status sov_sampler_init(sov_sampler *s, int count, uint64_t seed) {
    s->count = count;
    s->seed = seed;
    s->epoch = -1;
    s->order = sov_malloc((size_t)count * sizeof *s->order);
    return s->order ? SOV_OK : SOV_ERR_NOMEM;
}

void sov_sampler_free(sov_sampler *s) {
    free(s->order);
    s->order = NULL;
}

const int32_t *sov_sampler_epoch(sov_sampler *s, long epoch) {
    if (s->epoch == epoch)
        return s->order;
    sov_rng rng;
    sov_rng_seed(&rng, s->seed, 0x5a3d1e00u + (uint64_t)epoch);
    for (int i = 0; i < s->count; i++)
        s->order[i] = i;
    for (int i = s->count - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)sov_rng_below(&rng, (uint64_t)i + 1);
        int32_t t = s->order[i];
        s->order[i] = s->order[j];
        s->order[j] = t;
    }
    s->epoch = epoch;
    return s->order;
}

const int32_t *sov_sampler_batch(sov_sampler *s, long step, int global_batch, int rank, int local_batch) {
    long per_epoch = s->count / global_batch; /* the last partial batch of an epoch is dropped */
    const int32_t *order = sov_sampler_epoch(s, step / per_epoch);
    return order + (step % per_epoch) * global_batch + (long)rank * local_batch;
}
