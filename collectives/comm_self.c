/* comm_self.c: the backend of a one-rank job. Every collective is the identity (a copy when out of place);
 * an average or maximum over one rank is the value itself. */
#include "comm_internal.h"

#include <string.h>

static sov_status self_run(sov_comm *c, const sov_op *op) {
    (void)c;
    size_t bytes = op->count * sov_dtype_size(op->dtype);
    if (op->kind != OP_BARRIER && op->kind != OP_BROADCAST && op->send != op->recv)
        memmove(op->recv, op->send, bytes);
    return SOV_OK;
}

static void self_destroy(sov_comm *c) { (void)c; }

static const sov_comm_ops self_ops = {.run = self_run, .destroy = self_destroy};

sov_status sov_comm_self_init(sov_comm *c) {
    c->ops = &self_ops;
    return SOV_OK;
}
