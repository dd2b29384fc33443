/* comm.c: backend choice, argument checks, and the blocking and asynchronous entry points. */
#include "comm_internal.h"

#include <stdlib.h>
#include <string.h>

/* The element types collectives move and reduce. */
static int comm_dtype_supported(sov_dtype dt) {
    return dt == SOV_F32 || dt == SOV_BF16 || dt == SOV_F16 || dt == SOV_F64 || dt == SOV_U8;
}

const char *sov_op_name(sov_op_kind kind) {
    static const char *names[] = {"allreduce", "broadcast", "allgather", "reduce_scatter", "barrier"};
    return (unsigned)kind < sizeof names / sizeof *names ? names[kind] : "?";
}

static const char *backend_names[] = {"auto", "self", "shm", "mpi", "hier", "nccl", "tcp"};

sov_status sov_comm_backend_parse(const char *name, sov_comm_backend *out) {
    for (int i = 0; i < (int)(sizeof backend_names / sizeof *backend_names); i++)
        if (strcmp(name, backend_names[i]) == 0) {
            *out = (sov_comm_backend)i;
            return SOV_OK;
        }
    return sov_fail(SOV_ERR_INVALID, "unknown communicator backend \"%s\" (choose auto, self, shm, mpi, hier, nccl or "
                    "tcp)", name);
}

const char *sov_comm_backend_name(sov_comm_backend b) {
    return (unsigned)b < sizeof backend_names / sizeof *backend_names ? backend_names[b] : "?";
}

static sov_comm_backend choose(const sov_world *w, const sov_comm_config *cfg) {
    if (cfg->backend != SOV_COMM_AUTO)
        return cfg->backend;
    if (w->size == 1)
        return SOV_COMM_SELF;
    if (cfg->gpu)
        return SOV_COMM_NCCL;
    if (sov_world_without_mpi(w))
        return SOV_COMM_TCP;
    return w->local_size == w->size ? SOV_COMM_SHM : SOV_COMM_HIER;
}

static sov_status init_backend(sov_comm *c, const sov_world *w) {
    switch (c->backend) {
    case SOV_COMM_SELF:
        if (w->size != 1)
            return sov_fail(SOV_ERR_INVALID, "the self backend serves one rank, but the job has %d", w->size);
        return sov_comm_self_init(c);
    case SOV_COMM_SHM:
        if (w->local_size != w->size)
            return sov_fail(SOV_ERR_INVALID, "the shm backend needs every rank on one host, but only %d of %d ranks "
                            "share this one (use --comm hier or mpi)", w->local_size, w->size);
        return sov_comm_shm_init(c, w);
    case SOV_COMM_MPI: return sov_comm_mpi_init(c);
    case SOV_COMM_HIER: return sov_comm_hier_init(c, w);
    case SOV_COMM_NCCL: return sov_comm_nccl_init(c, w);
    case SOV_COMM_TCP: return sov_comm_tcp_init(c, w);
    case SOV_COMM_AUTO: break;
    }
    return sov_fail(SOV_ERR_INTERNAL, "no backend chosen");
}

sov_status sov_comm_init(sov_comm **out, const sov_world *world, const sov_comm_config *cfg) {
    sov_comm *c = sov_calloc(1, sizeof *c);
    if (!c)
        return SOV_ERR_NOMEM;
    c->backend = choose(world, cfg);
    c->rank = world->rank;
    c->size = world->size;
    c->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : 300.0;
    pthread_mutex_init(&c->async.lock, NULL);
    pthread_cond_init(&c->async.work, NULL);
    pthread_cond_init(&c->async.done, NULL);
    sov_status st = init_backend(c, world);
    if (st != SOV_OK) {
        sov_mpi_release(c);
        free(c);
        return st;
    }
    /* shm and tcp waits time out by themselves and name the missing ranks: give them the first word */
    c->watchdog_grace = c->backend == SOV_COMM_SHM || c->backend == SOV_COMM_HIER || c->backend == SOV_COMM_TCP ? 2.0
                                                                                                          : 0.0;
    if (c->size > 1)
        sov_watchdog_start(c);
    *out = c;
    return SOV_OK;
}

void sov_comm_destroy(sov_comm *c) {
    if (!c)
        return;
    sov_async_shutdown(c);
    sov_watchdog_stop(c);
    c->ops->destroy(c);
    sov_mpi_release(c);
    pthread_mutex_destroy(&c->async.lock);
    pthread_cond_destroy(&c->async.work);
    pthread_cond_destroy(&c->async.done);
    free(c);
}

sov_comm_backend sov_comm_backend_of(const sov_comm *c) { return c->backend; }
int sov_comm_rank(const sov_comm *c) { return c->rank; }
int sov_comm_size(const sov_comm *c) { return c->size; }

/* Both wait for the collectives in flight first: the progress thread looks buffers up in the backend's table of
 * registered ones (shm, hier), which these change. (ThreadSanitizer caught comm_check allocating a buffer while
 * an earlier iallreduce ran on the hier backend.) */
void *sov_comm_alloc(sov_comm *c, size_t bytes) {
    if (!c->ops->alloc)
        return sov_aligned_alloc(bytes);
    sov_async_drain(c);
    return c->ops->alloc(c, bytes);
}

void sov_comm_free(sov_comm *c, void *ptr) {
    if (!ptr)
        return;
    if (!c->ops->free) {
        free(ptr);
        return;
    }
    sov_async_drain(c);
    c->ops->free(c, ptr);
}

void sov_comm_set_stream(sov_comm *c, void *cuda_stream) { c->stream = cuda_stream; }

void sov_comm_abort(sov_comm *c, int exit_code) {
    if (c && c->ops->abort)
        c->ops->abort(c, exit_code);
}

static sov_status check(const sov_comm *c, const sov_op *op) {
    const char *name = sov_op_name(op->kind);
    if (op->kind == OP_BARRIER)
        return SOV_OK;
    if (sov_dtype_size(op->dtype) == 0)
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: unknown dtype %d", c->rank, name, (int)op->dtype);
    if (!comm_dtype_supported(op->dtype))
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: %s: collectives take f32, bf16, f16, f64 or u8, not %s", c->rank,
                        name, sov_dtype_name(op->dtype));
    if (op->count > (size_t)1 << 40)
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: count %zu is implausibly large", c->rank, name, op->count);
    if (op->count && (!op->recv || (op->kind != OP_BROADCAST && !op->send)))
        return sov_fail(SOV_ERR_INVALID, "rank %d: %s: NULL buffer", c->rank, name);
    if (op->kind == OP_ALLREDUCE || op->kind == OP_REDUCE_SCATTER) {
        if ((unsigned)op->redop > SOV_MAX)
            return sov_fail(SOV_ERR_INVALID, "rank %d: %s: unknown reduction %d", c->rank, name, (int)op->redop);
        if (op->dtype == SOV_U8 && op->redop != SOV_SUM)
            return sov_fail(SOV_ERR_INVALID, "rank %d: %s: u8 supports only sum", c->rank, name);
    }
    if (op->kind == OP_BROADCAST && (op->root < 0 || op->root >= c->size))
        return sov_fail(SOV_ERR_INVALID, "rank %d: broadcast: root %d outside 0..%d", c->rank, op->root, c->size - 1);
    return SOV_OK;
}

/* Checks, numbers and issues one collective; blocking when req is NULL. */
static sov_status issue(sov_comm *c, sov_op op, sov_request **req) {
    if (req)
        *req = NULL;
    SOV_CHECK(check(c, &op));
    op.seq = ++c->seq;
    if (c->ops->issued)
        SOV_CHECK(c->ops->issued(c, &op));
    return sov_async_submit(c, &op, req);
}

sov_status sov_comm_iallreduce(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt, sov_redop op,
                               sov_request **req) {
    return issue(c, (sov_op){.kind = OP_ALLREDUCE, .send = send, .recv = recv, .count = count, .dtype = dt,
                             .redop = op}, req);
}

sov_status sov_comm_ibroadcast(sov_comm *c, void *buf, size_t count, sov_dtype dt, int root, sov_request **req) {
    return issue(c, (sov_op){.kind = OP_BROADCAST, .send = buf, .recv = buf, .count = count, .dtype = dt,
                             .root = root}, req);
}

sov_status sov_comm_iallgather(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                               sov_request **req) {
    return issue(c, (sov_op){.kind = OP_ALLGATHER, .send = send, .recv = recv, .count = count, .dtype = dt}, req);
}

sov_status sov_comm_ireduce_scatter(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                    sov_redop op, sov_request **req) {
    return issue(c, (sov_op){.kind = OP_REDUCE_SCATTER, .send = send, .recv = recv, .count = count, .dtype = dt,
                             .redop = op}, req);
}

sov_status sov_comm_ibarrier(sov_comm *c, sov_request **req) {
    return issue(c, (sov_op){.kind = OP_BARRIER}, req);
}

sov_status sov_comm_allreduce(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt, sov_redop op) {
    return sov_comm_iallreduce(c, send, recv, count, dt, op, NULL);
}

sov_status sov_comm_broadcast(sov_comm *c, void *buf, size_t count, sov_dtype dt, int root) {
    return sov_comm_ibroadcast(c, buf, count, dt, root, NULL);
}

sov_status sov_comm_allgather(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt) {
    return sov_comm_iallgather(c, send, recv, count, dt, NULL);
}

sov_status sov_comm_reduce_scatter(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                   sov_redop op) {
    return sov_comm_ireduce_scatter(c, send, recv, count, dt, op, NULL);
}

sov_status sov_comm_barrier(sov_comm *c) { return sov_comm_ibarrier(c, NULL); }
