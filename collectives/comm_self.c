/* comm_self.c: the backend of a one-rank job. Every collective is the identity (a copy when out of place). */
#include "comm_internal.h"

#include <string.h>

static void copy_if_needed(const void *send, void *recv, size_t bytes) {
    if (send != recv)
        memmove(recv, send, bytes);
}

static sov_status self_allreduce(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                 sov_redop op) {
    (void)c, (void)op;
    copy_if_needed(send, recv, count * sov_dtype_size(dt));
    return SOV_OK;
}

static sov_status self_broadcast(sov_comm *c, void *buf, size_t count, sov_dtype dt, int root) {
    (void)c, (void)buf, (void)count, (void)dt, (void)root;
    return SOV_OK;
}

static sov_status self_allgather(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt) {
    (void)c;
    copy_if_needed(send, recv, count * sov_dtype_size(dt));
    return SOV_OK;
}

static sov_status self_barrier(sov_comm *c) {
    (void)c;
    return SOV_OK;
}

static void self_destroy(sov_comm *c) { (void)c; }

static const sov_comm_ops self_ops = {
    .allreduce = self_allreduce,
    .broadcast = self_broadcast,
    .allgather = self_allgather,
    .reduce_scatter = self_allreduce, /* one rank: its block is the whole reduction */
    .barrier = self_barrier,
    .destroy = self_destroy,
};

sov_status sov_comm_self_init(sov_comm *c) {
    c->ops = &self_ops;
    return SOV_OK;
}
