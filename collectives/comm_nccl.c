/* comm_nccl.c: collectives on GPU buffers through NCCL (CUDA builds only).
 *
 * Rank 0 makes the ncclUniqueId and broadcasts it over MPI (a one-rank job needs no MPI); every rank then joins
 * with ncclCommInitRankConfig on the GPU of its local rank. Collectives run on a dedicated non-blocking stream,
 * after the caller's stream has passed the point where the collective was issued (a CUDA event per collective).
 * Completion is polled together with ncclCommGetAsyncError, so a failed or hung NCCL operation ends in
 * ncclCommAbort and a message rather than in a silent hang. Host buffers (the runtime's small control messages:
 * losses, flags, hashes) are staged through device memory. */
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
#include <netinet/in.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

typedef struct nccl_state {
    MPI_Comm world; /* MPI_COMM_NULL in a one-rank job */
    ncclComm_t comm;
    cudaStream_t stream;
    float *one; /* device scalar for barriers */
    int device;
    uint8_t *stage;      /* device staging for host buffers */
    uint8_t *host_stage; /* its pinned twin: copies between it and `stage` never block on the NCCL stream */
    size_t stage_cap;
} nccl_state;

/* Takes the communicator for an abort or destroy, so the progress thread and the main thread never both do. */
static ncclComm_t take_comm(nccl_state *s) { return __atomic_exchange_n(&s->comm, NULL, __ATOMIC_ACQ_REL); }

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
    default: break; /* comm.c refuses the other types */
    }
    return ncclFloat32;
}

/* An average over one rank is a sum: NCCL 2.28.9's one-rank ncclAvg out of place was seen (comm_check, H200)
 * to leave the last count % (16 / element size) elements of the output unwritten, while ncclSum is right. */
static ncclRedOp_t nccl_op(const sov_comm *c, sov_redop op) {
    if (op == SOV_AVG && c->size == 1)
        return ncclSum;
    return op == SOV_MAX ? ncclMax : op == SOV_AVG ? ncclAvg : ncclSum;
}

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
            ncclComm_t dead = take_comm(s);
            if (dead)
                ncclCommAbort(dead);
            return nccl_error(c, sov_op_name(op->kind), async);
        }
        if (sov_now() - start > c->timeout_s) {
            ncclComm_t dead = take_comm(s);
            if (dead)
                ncclCommAbort(dead);
            return sov_fail(SOV_ERR_COMM, "rank %d: NCCL %s #%llu did not complete within %.0f s (--comm-timeout): a "
                            "rank stopped calling collectives or hangs; communicator aborted", c->rank,
                            sov_op_name(op->kind), (unsigned long long)op->seq, c->timeout_s);
        }
        sched_yield();
    }
}

/* ---- host buffers, staged through device memory ---- */

static int is_host(const void *p) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* older runtimes flag plain host pointers as an error: clear it */
        return 1;
    }
    return a.type == cudaMemoryTypeUnregistered || a.type == cudaMemoryTypeHost;
}

static size_t send_bytes(const sov_comm *c, const sov_op *op) {
    size_t n = op->kind == OP_REDUCE_SCATTER ? op->count * (size_t)c->size : op->count;
    return n * sov_dtype_size(op->dtype);
}

static size_t recv_bytes(const sov_comm *c, const sov_op *op) {
    size_t n = op->kind == OP_ALLGATHER ? op->count * (size_t)c->size : op->count;
    return n * sov_dtype_size(op->dtype);
}

static sov_status grow_stage(sov_comm *c, nccl_state *s, size_t bytes) {
    if (bytes <= s->stage_cap)
        return SOV_OK;
    cudaFree(s->stage);
    cudaFreeHost(s->host_stage);
    s->stage = s->host_stage = NULL;
    s->stage_cap = 0;
    cudaError_t err = cudaMalloc((void **)&s->stage, bytes);
    if (err == cudaSuccess)
        err = cudaMallocHost((void **)&s->host_stage, bytes);
    if (err != cudaSuccess)
        return cuda_error(c, "staging buffers for host data (cudaMalloc, cudaMallocHost)", err);
    s->stage_cap = bytes;
    return SOV_OK;
}

/* Host bytes to device staging at `off`, through the pinned twin. */
static cudaError_t stage_copy_in(nccl_state *s, size_t off, const void *src, size_t n) {
    memcpy(s->host_stage + off, src, n);
    return cudaMemcpyAsync(s->stage + off, s->host_stage + off, n, cudaMemcpyHostToDevice, s->stream);
}

/* Rewrites op's host buffers to device staging: recv first (its whole content, for in-place operations), then
 * send, inside recv's staging when it lies in recv (in place), else after it. Sets *host_recv when the result
 * must be copied back (from the pinned twin of stage[0, recv bytes), once the stream is done). */
static sov_status stage_in(sov_comm *c, nccl_state *s, sov_op *op, void **host_recv) {
    size_t sb = send_bytes(c, op), rb = recv_bytes(c, op);
    int recv_host = rb && is_host(op->recv), send_host = sb && op->kind != OP_BARRIER && is_host(op->send);
    *host_recv = NULL;
    if (!recv_host && !send_host)
        return SOV_OK;
    SOV_CHECK(grow_stage(c, s, rb + sb + 256));
    const uint8_t *send = op->send, *recv = op->recv;
    size_t send_off = (rb + 255) & ~(size_t)255;
    cudaError_t err = cudaSuccess;
    if (recv_host) {
        err = stage_copy_in(s, 0, recv, rb);
        *host_recv = op->recv;
        op->recv = s->stage;
    }
    if (send_host && err == cudaSuccess) {
        if (recv_host && send >= recv && send + sb <= recv + rb) {
            op->send = s->stage + (send - recv);
        } else {
            err = stage_copy_in(s, send_off, send, sb);
            op->send = s->stage + send_off;
        }
    }
    return err == cudaSuccess ? SOV_OK : cuda_error(c, "staging host data to the GPU", err);
}

/* ---- collectives ---- */

static ncclResult_t enqueue(const sov_comm *c, nccl_state *s, const sov_op *op) {
    ncclDataType_t dt = nccl_type(op->dtype);
    switch (op->kind) {
    case OP_ALLREDUCE: return ncclAllReduce(op->send, op->recv, op->count, dt, nccl_op(c, op->redop), s->comm, s->stream);
    case OP_BROADCAST: return ncclBroadcast(op->recv, op->recv, op->count, dt, op->root, s->comm, s->stream);
    case OP_ALLGATHER: return ncclAllGather(op->send, op->recv, op->count, dt, s->comm, s->stream);
    case OP_REDUCE_SCATTER:
        return ncclReduceScatter(op->send, op->recv, op->count, dt, nccl_op(c, op->redop), s->comm, s->stream);
    case OP_BARRIER: return ncclAllReduce(s->one, s->one, 1, ncclFloat32, ncclSum, s->comm, s->stream);
    }
    return ncclInvalidArgument;
}

/* Makes the NCCL stream wait for the point the caller's stream had reached when the collective was issued. */
static sov_status wait_for_issuer(sov_comm *c, nccl_state *s, const sov_op *op) {
    cudaError_t err = cudaSetDevice(s->device); /* this may be the progress thread */
    if (err == cudaSuccess && op->ready_event)
        err = cudaStreamWaitEvent(s->stream, (cudaEvent_t)op->ready_event, 0);
    if (op->ready_event)
        cudaEventDestroy((cudaEvent_t)op->ready_event);
    return err == cudaSuccess ? SOV_OK : cuda_error(c, "ordering a collective after the caller's stream", err);
}

static sov_status nccl_run(sov_comm *c, const sov_op *issued) {
    nccl_state *s = c->impl;
    sov_op op = *issued;
    SOV_CHECK(wait_for_issuer(c, s, &op));
    if (!__atomic_load_n(&s->comm, __ATOMIC_ACQUIRE))
        return sov_fail(SOV_ERR_COMM, "rank %d: the NCCL communicator was aborted after an earlier failure", c->rank);
    void *host_recv;
    SOV_CHECK(stage_in(c, s, &op, &host_recv));
    ncclResult_t r = enqueue(c, s, &op);
    if (r != ncclSuccess)
        return nccl_error(c, sov_op_name(op.kind), r);
    size_t rb = recv_bytes(c, &op);
    if (host_recv) {
        cudaError_t err = cudaMemcpyAsync(s->host_stage, op.recv, rb, cudaMemcpyDeviceToHost, s->stream);
        if (err != cudaSuccess)
            return cuda_error(c, "copying a staged result to the host", err);
    }
    SOV_CHECK(wait_stream(c, s, &op));
    if (host_recv)
        memcpy(host_recv, s->host_stage, rb);
    return SOV_OK;
}

/* Records where the caller's stream is (the legacy default stream when none was set: that is where a plain
 * cudaMemcpy lands), so the collective starts after the work that produced its buffers. */
static sov_status nccl_issued(sov_comm *c, sov_op *op) {
    cudaEvent_t ev;
    cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (err != cudaSuccess)
        return cuda_error(c, "cudaEventCreate (ordering a collective after the caller's stream)", err);
    err = cudaEventRecord(ev, c->stream ? (cudaStream_t)c->stream : cudaStreamLegacy);
    if (err != cudaSuccess) {
        cudaEventDestroy(ev);
        return cuda_error(c, "cudaEventRecord (ordering a collective after the caller's stream)", err);
    }
    op->ready_event = ev;
    return SOV_OK;
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
    ncclComm_t comm = s ? take_comm(s) : NULL;
    if (comm)
        ncclCommAbort(comm);
    if (s && s->world != MPI_COMM_NULL)
        MPI_Abort(MPI_COMM_WORLD, exit_code);
}

static void nccl_destroy(sov_comm *c) {
    nccl_state *s = c->impl;
    if (!s)
        return;
    ncclComm_t comm = take_comm(s);
    if (comm)
        ncclCommDestroy(comm);
    cudaFree(s->one);
    cudaFree(s->stage);
    cudaFreeHost(s->host_stage);
    if (s->stream)
        cudaStreamDestroy(s->stream);
    if (s->world != MPI_COMM_NULL)
        MPI_Comm_free(&s->world);
    free(s);
    c->impl = NULL;
}

static const sov_comm_ops nccl_ops = {.run = nccl_run, .alloc = nccl_alloc, .free = nccl_free, .abort = nccl_abort,
                                      .destroy = nccl_destroy, .issued = nccl_issued};

/* Rank 0's unique id, to every rank through the rendezvous of a job started without mpirun. */
static sov_status share_id_by_rendezvous(sov_comm *c, const sov_world *w, ncclUniqueId *id) {
    ncclUniqueId *all = sov_calloc((size_t)c->size, sizeof *all);
    struct sockaddr_in *addrs = sov_calloc((size_t)c->size, sizeof(struct sockaddr_in));
    sov_status st = all && addrs ? sov_rendezvous(w, id, sizeof *id, all, addrs, c->timeout_s) : SOV_ERR_NOMEM;
    if (st == SOV_OK)
        *id = all[0];
    free(all);
    free(addrs);
    return st;
}

/* Rank 0's unique id, to every rank over MPI or the rendezvous (nothing to send in a one-rank job). */
static sov_status share_id(sov_comm *c, nccl_state *s, const sov_world *w, ncclUniqueId *id) {
    ncclResult_t r = ncclSuccess;
    memset(id, 0, sizeof *id);
    if (c->rank == 0)
        r = ncclGetUniqueId(id);
    if (c->size == 1 || (r != ncclSuccess && sov_world_without_mpi(w)))
        return r == ncclSuccess ? SOV_OK : nccl_error(c, "ncclGetUniqueId", r);
    if (sov_world_without_mpi(w))
        return share_id_by_rendezvous(c, w, id);
    int ok = r == ncclSuccess;
    MPI_Bcast(&ok, 1, MPI_INT, 0, s->world);
    if (!ok)
        return c->rank == 0 ? nccl_error(c, "ncclGetUniqueId", r)
                            : sov_fail(SOV_ERR_COMM, "rank %d: rank 0 could not create the NCCL id", c->rank);
    MPI_Bcast(id, sizeof *id, MPI_BYTE, 0, s->world);
    return SOV_OK;
}

static sov_status nccl_setup(sov_comm *c, nccl_state *s, const sov_world *w) {
    int devices = 0;
    cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess)
        return cuda_error(c, "no usable GPU for the nccl backend: cudaGetDeviceCount", err);
    if (devices == 0)
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: the nccl backend needs a GPU and none is visible", c->rank);
    if (w->local_size > sov_host_gpus(devices))
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: the nccl backend needs a GPU per rank, but %d ranks share this "
                        "host's %d GPU(s) (NCCL refuses two ranks on one GPU): start fewer ranks per host or use "
                        "--device cpu", c->rank, w->local_size, sov_host_gpus(devices));
    s->device = w->local_rank % devices;
    if ((err = cudaSetDevice(s->device)) != cudaSuccess)
        return cuda_error(c, "cudaSetDevice", err);
    if ((err = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return cuda_error(c, "cudaStreamCreate", err);
    if (!(s->one = nccl_alloc(c, sizeof(float))))
        return SOV_ERR_COMM;
    ncclUniqueId id;
    SOV_CHECK(share_id(c, s, w, &id));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    ncclResult_t r = ncclCommInitRankConfig(&s->comm, c->size, id, c->rank, &config);
    if (r != ncclSuccess) {
        s->comm = NULL;
        return nccl_error(c, "ncclCommInitRankConfig", r);
    }
    return SOV_OK;
}

sov_status sov_comm_nccl_init(sov_comm *c, const sov_world *world) {
    int mpi = c->size > 1 && !sov_world_without_mpi(world);
    if (mpi)
        SOV_CHECK(sov_mpi_ensure(c));
    nccl_state *s = sov_calloc(1, sizeof *s);
    if (!s)
        return SOV_ERR_NOMEM;
    s->world = MPI_COMM_NULL;
    c->impl = s;
    c->ops = &nccl_ops;
    if (mpi)
        MPI_Comm_dup(MPI_COMM_WORLD, &s->world);
    sov_status st = nccl_setup(c, s, world);
    if (st != SOV_OK)
        nccl_destroy(c);
    return st;
}

#endif
