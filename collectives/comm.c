/* comm.c: argument checks and dispatch to the chosen backend. */
#include "comm_internal.h"

#include <stdlib.h>
#include <string.h>

size_t sov_dtype_size(sov_dtype dt) {
    switch (dt) {
    case SOV_F32: return 4;
    case SOV_BF16: case SOV_F16: return 2;
    case SOV_F64: return 8;
    case SOV_U8: return 1;
    }
    return 0;
}

const char *sov_dtype_name(sov_dtype dt) {
    static const char *names[] = {"f32", "bf16", "f16", "f64", "u8"};
    return (unsigned)dt < sizeof names / sizeof *names ? names[dt] : "?";
}

static const char *backend_names[] = {"auto", "self", "mpi"};

sov_status sov_comm_backend_parse(const char *name, sov_comm_backend *out) {
    for (int i = 0; i < (int)(sizeof backend_names / sizeof *backend_names); i++)
        if (strcmp(name, backend_names[i]) == 0) {
            *out = (sov_comm_backend)i;
            return SOV_OK;
        }
    return sov_fail(SOV_ERR_INVALID, "unknown communicator backend \"%s\" (choose auto, self or mpi)", name);
}

const char *sov_comm_backend_name(sov_comm_backend b) {
    return (unsigned)b < sizeof backend_names / sizeof *backend_names ? backend_names[b] : "?";
}

sov_status sov_comm_init(sov_comm **out, const sov_world *world, sov_comm_backend backend) {
    if (backend == SOV_COMM_AUTO)
        backend = world->size == 1 ? SOV_COMM_SELF : SOV_COMM_MPI;
    if (backend == SOV_COMM_SELF && world->size != 1)
        return sov_fail(SOV_ERR_INVALID, "the self backend serves one rank, but the job has %d", world->size);
    sov_comm *c = sov_calloc(1, sizeof *c);
    if (!c)
        return SOV_ERR_NOMEM;
    c->backend = backend;
    c->rank = world->rank;
    c->size = world->size;
    sov_status st = backend == SOV_COMM_SELF ? sov_comm_self_init(c) : sov_comm_mpi_init(c);
    if (st != SOV_OK) {
        free(c);
        return st;
    }
    *out = c;
    return SOV_OK;
}

void sov_comm_destroy(sov_comm *c) {
    if (!c)
        return;
    c->ops->destroy(c);
    free(c);
}

sov_comm_backend sov_comm_backend_of(const sov_comm *c) { return c->backend; }
int sov_comm_rank(const sov_comm *c) { return c->rank; }
int sov_comm_size(const sov_comm *c) { return c->size; }

void *sov_comm_alloc(sov_comm *c, size_t bytes) {
    (void)c;
    return sov_aligned_alloc(bytes);
}

void sov_comm_free(sov_comm *c, void *ptr) {
    (void)c;
    free(ptr);
}

static sov_status check_args(const sov_comm *c, const char *op, sov_dtype dt, size_t count) {
    if (sov_dtype_size(dt) == 0)
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: unknown dtype %d", c->rank, op, (int)dt);
    if (count > (size_t)1 << 40)
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: count %zu is implausibly large", c->rank, op, count);
    return SOV_OK;
}

static sov_status check_redop(const sov_comm *c, const char *op, sov_dtype dt, sov_redop rop) {
    if ((unsigned)rop > SOV_MAX)
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: unknown reduction %d", c->rank, op, (int)rop);
    if (dt == SOV_U8 && rop != SOV_SUM)
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: u8 supports only sum", c->rank, op);
    return SOV_OK;
}

sov_status sov_comm_allreduce(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt, sov_redop op) {
    SOV_CHECK(check_args(c, "allreduce", dt, count));
    SOV_CHECK(check_redop(c, "allreduce", dt, op));
    return count ? c->ops->allreduce(c, send, recv, count, dt, op) : SOV_OK;
}

sov_status sov_comm_broadcast(sov_comm *c, void *buf, size_t count, sov_dtype dt, int root) {
    SOV_CHECK(check_args(c, "broadcast", dt, count));
    if (root < 0 || root >= c->size)
        return sov_fail(SOV_ERR_INVALID, "rank %d: broadcast: root %d outside 0..%d", c->rank, root, c->size - 1);
    return count ? c->ops->broadcast(c, buf, count, dt, root) : SOV_OK;
}

sov_status sov_comm_allgather(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt) {
    SOV_CHECK(check_args(c, "allgather", dt, count));
    return count ? c->ops->allgather(c, send, recv, count, dt) : SOV_OK;
}

sov_status sov_comm_reduce_scatter(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                   sov_redop op) {
    SOV_CHECK(check_args(c, "reduce_scatter", dt, count));
    SOV_CHECK(check_redop(c, "reduce_scatter", dt, op));
    return count ? c->ops->reduce_scatter(c, send, recv, count, dt, op) : SOV_OK;
}

sov_status sov_comm_barrier(sov_comm *c) { return c->ops->barrier(c); }

void sov_comm_abort(sov_comm *c, int exit_code) {
    if (c && c->ops->abort)
        c->ops->abort(c, exit_code);
}
