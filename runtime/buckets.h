/* buckets.h (internal): gradient all-reduce in buckets, overlapped with backward (PyTorch DDP's scheme).
 *
 * Backward reports finished gradient ranges in reverse layer order through the model's gradient hook. Ranges
 * accumulate into a bucket; once a bucket holds at least its cap (the first bucket ~1 MiB so communication
 * starts early, the rest `cap_bytes`), an asynchronous allreduce (average) of it starts while backward goes on.
 * sov_buckets_finish() sends what is left and waits for every bucket, before the optimizer step. A layer is
 * never split across buckets. A cap of 0 disables overlap: one allreduce of everything after backward. */
#ifndef SOV_BUCKETS_H
#define SOV_BUCKETS_H

#include <sovtrain/comm.h>
#include "device.h"
#include <sovtrain/runtime.h>

#define SOV_BUCKETS_MAX 4096

typedef struct sov_buckets {
    sov_comm *comm;
    float *grads;
    size_t count;       /* elements in grads */
    size_t first_cap;   /* elements */
    size_t cap;         /* elements; 0 = no overlap */
    size_t lo, hi;      /* the bucket being filled: [lo, hi) */
    size_t sent_lo;     /* everything in [sent_lo, count) has been sent */
    int ordered;        /* ranges so far arrived contiguous and descending */
    int launched;       /* buckets launched this step */
    sov_request *reqs[SOV_BUCKETS_MAX];
    sov_status error;   /* first failure while launching (reported by finish) */
} sov_buckets;

void sov_buckets_init(sov_buckets *b, sov_comm *comm, float *grads, size_t count, size_t cap_bytes);
/* Call before each backward. */
void sov_buckets_begin(sov_buckets *b);
/* The hook to pass to the model's train_step (NULL when overlap is disabled). */
sov_grad_hook sov_buckets_hook(sov_buckets *b);
/* Reduces what has not been sent and waits for every bucket. */
sov_status sov_buckets_finish(sov_buckets *b);

#endif
