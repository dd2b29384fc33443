/* comm_nccl.c: collectives on GPU buffers through NCCL (CUDA builds only).
 *
 * Rank 0 makes the ncclUniqueId and broadcasts it over MPI; every rank then joins with ncclCommInitRankConfig on
 * the GPU of its local rank. Collectives run on a dedicated non-blocking stream; completion is polled together
 * with ncclCommGetAsyncError, so a failed or hung NCCL operation ends in ncclCommAbort and a message rather than
 * in a silent hang. */
#include "comm_internal.h"

#ifndef SOVTRAIN_HAVE_CUDA

sov_status sov_comm_nccl_init(sov_comm *c, const sov_world *world) {
    (void)world;
    return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: the nccl backend needs a CUDA build of sovtrain (this one was built "
                    "without the CUDA toolkit and NCCL)", c->rank);
}

#else

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <sched.h>
#include <stdlib.h>

typedef struct nccl_state {
    MPI_Comm world;
    ncclComm_t comm;
    cudaStream_t stream;
    float *one; /* device scalar for barriers */
    int device;
} nccl_state;

static sov_status cuda_error(const sov_comm *c, const char *what, cudaError_t err) {
    return sov_fail(SOV_ERR_COMM, "rank %d: %s: %s (%s)", c->rank, what, cudaGetErrorString(err),
                    cudaGetErrorName(err));
}

static sov_status nccl_error(const sov_comm *c, const char *what, ncclResult_t res) {
    return sov_fail(SOV_ERR_COMM, "rank %d: %s: %s", c->rank, what, ncclGetErrorString(res));
}

static ncclDataType_t nccl_type(sov_dtype dt) {
    switch (dt) {
    case SOV_F32: return ncclFloat32;
    case SOV_BF16: return ncclBfloat16;
    case SOV_F16: return ncclFloat16;
    case SOV_F64: return ncclFloat64;
    case SOV_U8: return ncclUint8;
    }
    return ncclFloat32;
}

static ncclRedOp_t nccl_op(sov_redop op) { return op == SOV_MAX ? ncclMax : op == SOV_AVG ? ncclAvg : ncclSum; }

/* Waits for the stream, watching NCCL's asynchronous error and the timeout. */
static sov_status wait_stream(sov_comm *c, nccl_state *s, const sov_op *op) {
    double start = sov_now();
    for (;;) {
        cudaError_t err = cudaStreamQuery(s->stream);
        if (err == cudaSuccess)
            return SOV_OK;
        if (err != cudaErrorNotReady)
            return cuda_error(c, sov_op_name(op->kind), err);
        ncclResult_t async;
        ncclCommGetAsyncError(s->comm, &async);
        if (async != ncclSuccess && async != ncclInProgress) {
            ncclCommAbort(s->comm);
            s->comm = NULL;
            return nccl_error(c, sov_op_name(op->kind), async);
        }
        if (sov_now() - start > c->timeout_s) {
            ncclCommAbort(s->comm);
            s->comm = NULL;
            return sov_fail(SOV_ERR_COMM, "rank %d: NCCL %s #%llu did not complete within %.0f s (--comm-timeout): a "
                            "rank stopped calling collectives or hangs; communicator aborted", c->rank,
                            sov_op_name(op->kind), (unsigned long long)op->seq, c->timeout_s);
        }
        sched_yield();
    }
}

static sov_status nccl_run(sov_comm *c, const sov_op *op) {
    nccl_state *s = c->impl;
    if (!s->comm)
        return sov_fail(SOV_ERR_COMM, "rank %d: the NCCL communicator was aborted after an earlier failure", c->rank);
    ncclDataType_t dt = nccl_type(op->dtype);
    ncclResult_t r = ncclSuccess;
    switch (op->kind) {
    case OP_ALLREDUCE: r = ncclAllReduce(op->send, op->recv, op->count, dt, nccl_op(op->redop), s->comm, s->stream); break;
    case OP_BROADCAST: r = ncclBroadcast(op->recv, op->recv, op->count, dt, op->root, s->comm, s->stream); break;
    case OP_ALLGATHER: r = ncclAllGather(op->send, op->recv, op->count, dt, s->comm, s->stream); break;
    case OP_REDUCE_SCATTER:
        r = ncclReduceScatter(op->send, op->recv, op->count, dt, nccl_op(op->redop), s->comm, s->stream);
        break;
    case OP_BARRIER: r = ncclAllReduce(s->one, s->one, 1, ncclFloat32, ncclSum, s->comm, s->stream); break;
    }
    if (r != ncclSuccess)
        return nccl_error(c, sov_op_name(op->kind), r);
    return wait_stream(c, s, op);
}

static void *nccl_alloc(sov_comm *c, size_t bytes) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err == cudaSuccess)
        err = cudaMemset(p, 0, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        cuda_error(c, "cudaMalloc", err);
        return NULL;
    }
    return p;
}

static void nccl_free(sov_comm *c, void *p) {
    (void)c;
    cudaFree(p);
}

static void nccl_abort(sov_comm *c, int exit_code) {
    nccl_state *s = c->impl;
    if (s && s->comm)
        ncclCommAbort(s->comm);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
}

static void nccl_destroy(sov_comm *c) {
    nccl_state *s = c->impl;
    if (!s)
        return;
    if (s->comm)
        ncclCommDestroy(s->comm);
    if (s->one)
        cudaFree(s->one);
    if (s->stream)
        cudaStreamDestroy(s->stream);
    MPI_Comm_free(&s->world);
    free(s);
    c->impl = NULL;
}

static const sov_comm_ops nccl_ops = {
    .run = nccl_run, .alloc = nccl_alloc, .free = nccl_free, .abort = nccl_abort, .destroy = nccl_destroy};

static sov_status nccl_setup(sov_comm *c, nccl_state *s, const sov_world *w) {
    int devices = 0;
    cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess)
        return cuda_error(c, "no usable GPU for the nccl backend: cudaGetDeviceCount", err);
    if (devices == 0)
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: the nccl backend needs a GPU and none is visible", c->rank);
    s->device = w->local_rank % devices;
    if ((err = cudaSetDevice(s->device)) != cudaSuccess)
        return cuda_error(c, "cudaSetDevice", err);
    if ((err = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return cuda_error(c, "cudaStreamCreate", err);
    if (!(s->one = nccl_alloc(c, sizeof(float))))
        return SOV_ERR_COMM;
    ncclUniqueId id;
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0)
        r = ncclGetUniqueId(&id);
    int ok = r == ncclSuccess;
    MPI_Bcast(&ok, 1, MPI_INT, 0, s->world);
    if (!ok)
        return c->rank == 0 ? nccl_error(c, "ncclGetUniqueId", r)
                            : sov_fail(SOV_ERR_COMM, "rank %d: rank 0 could not create the NCCL id", c->rank);
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, s->world);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    if ((r = ncclCommInitRankConfig(&s->comm, c->size, id, c->rank, &config)) != ncclSuccess) {
        s->comm = NULL;
        return nccl_error(c, "ncclCommInitRankConfig", r);
    }
    return SOV_OK;
}

sov_status sov_comm_nccl_init(sov_comm *c, const sov_world *world) {
    SOV_CHECK(sov_mpi_ensure(c));
    nccl_state *s = sov_calloc(1, sizeof *s);
    if (!s)
        return SOV_ERR_NOMEM;
    c->impl = s;
    c->ops = &nccl_ops;
    MPI_Comm_dup(MPI_COMM_WORLD, &s->world);
    sov_status st = nccl_setup(c, s, world);
    if (st != SOV_OK)
        nccl_destroy(c);
    return st;
}

#endif
