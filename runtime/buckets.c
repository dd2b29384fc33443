/* buckets.c: see buckets.h. */
#include "buckets.h"

#define FIRST_BUCKET_BYTES ((size_t)1 << 20)

void sov_buckets_init(sov_buckets *b, sov_comm *comm, float *grads, size_t count, size_t cap_bytes) {
    *b = (sov_buckets){.comm = comm, .grads = grads, .count = count, .cap = cap_bytes / sizeof(float)};
    b->first_cap = b->cap < FIRST_BUCKET_BYTES / sizeof(float) ? b->cap : FIRST_BUCKET_BYTES / sizeof(float);
}

void sov_buckets_begin(sov_buckets *b) {
    b->lo = b->hi = b->sent_lo = b->count;
    b->ordered = 1;
    b->launched = 0;
    b->error = SOV_OK;
}

static void launch(sov_buckets *b, size_t lo, size_t hi) {
    if (hi <= lo || b->error != SOV_OK)
        return;
    if (b->launched == SOV_BUCKETS_MAX) { /* absurdly many layers: fold the rest into the final allreduce */
        b->ordered = 0;
        return;
    }
    b->error = sov_comm_iallreduce(b->comm, b->grads + lo, b->grads + lo, hi - lo, SOV_F32, SOV_AVG,
                                   &b->reqs[b->launched]);
    if (b->error == SOV_OK) {
        b->launched++;
        b->sent_lo = lo;
    }
}

static void ready(void *ctx, size_t offset, size_t count) {
    sov_buckets *b = ctx;
    if (!b->ordered || offset + count != b->lo) { /* not the next range down: give up overlapping this step */
        b->ordered = 0;
        return;
    }
    b->lo = offset;
    size_t cap = b->launched == 0 ? b->first_cap : b->cap;
    if (b->hi - b->lo >= cap) {
        launch(b, b->lo, b->hi);
        b->hi = b->lo;
    }
}

sov_grad_hook sov_buckets_hook(sov_buckets *b) {
    return b->cap ? (sov_grad_hook){.ready = ready, .ctx = b} : (sov_grad_hook){0};
}

sov_status sov_buckets_finish(sov_buckets *b) {
    if (b->ordered)
        launch(b, 0, b->sent_lo); /* the partly filled last bucket and anything the hook never reported */
    sov_status st = b->error;
    for (int i = 0; i < b->launched; i++) {
        sov_status w = sov_comm_wait(b->reqs[i]);
        if (st == SOV_OK)
            st = w;
    }
    if (st == SOV_OK && !b->ordered) /* ranges came out of order: reduce what was not sent in one go */
        st = sov_comm_allreduce(b->comm, b->grads, b->grads, b->sent_lo, SOV_F32, SOV_AVG);
    b->launched = 0;
    return st;
}
