/* comm_mpi.c: the portable backend, Open MPI's blocking collectives on a private duplicate of MPI_COMM_WORLD.
 *
 * MPI takes int counts, so large operations are issued in slices of at most MAX_SLICE elements. bf16 and f16
 * travel as 16-bit integers with user-defined reductions that compute in f32. A blocking MPI call cannot time
 * out; the communicator's watchdog (comm_watchdog.c) ends a job stuck in one. */
#include "comm_internal.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_SLICE ((size_t)1 << 30)

typedef struct mpi_state {
    MPI_Comm comm;
} mpi_state;

static int mpi_thread_level;

sov_status sov_mpi_ensure(sov_comm *c) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (initialised)
        return SOV_OK;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &mpi_thread_level) != MPI_SUCCESS)
        return sov_fail(SOV_ERR_COMM, "rank %d: MPI_Init failed: start multi-rank jobs with `sovtrain launch` (or "
                        "mpirun)", c->rank);
    c->mpi_initialised = 1;
    return SOV_OK;
}

void sov_mpi_release(sov_comm *c) {
    if (c->mpi_initialised)
        MPI_Finalize();
    c->mpi_initialised = 0;
}

void sov_mpi_abort_world(sov_comm *c, int exit_code) {
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, exit_code);
}

static sov_status mpi_error(int rank, const sov_op *op, int err) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return sov_fail(SOV_ERR_COMM, "rank %d: MPI %s #%llu failed: %s", rank, sov_op_name(op->kind),
                    (unsigned long long)op->seq, msg);
}

/* ---- bf16 / f16 reductions as MPI user operations ---- */
#define HALF_OP(name, dt, rop)                                                      \
    static void name(void *in, void *inout, int *len, MPI_Datatype *type) {         \
        (void)type;                                                                 \
        const void *srcs[2] = {in, inout};                                          \
        sov_reduce(inout, srcs, 2, (size_t)*len, dt, rop, 1);                       \
    }
HALF_OP(bf16_sum, SOV_BF16, SOV_SUM)
HALF_OP(bf16_max, SOV_BF16, SOV_MAX)
HALF_OP(f16_sum, SOV_F16, SOV_SUM)
HALF_OP(f16_max, SOV_F16, SOV_MAX)
/* u8 too: Open MPI 4.1's vectorised MPI_SUM on MPI_UNSIGNED_CHAR saturates at 255 instead of wrapping (found by
 * tests/comm_check), so bytes are summed by our own wrapping reduction. */
HALF_OP(u8_sum, SOV_U8, SOV_SUM)

static MPI_Op half_ops[2][2]; /* [bf16, f16][sum, max], created once per process */
static MPI_Op u8_sum_op;
static int half_ops_ready;

static void create_half_ops(void) {
    if (half_ops_ready)
        return;
    MPI_Op_create(bf16_sum, 1, &half_ops[0][0]);
    MPI_Op_create(bf16_max, 1, &half_ops[0][1]);
    MPI_Op_create(f16_sum, 1, &half_ops[1][0]);
    MPI_Op_create(f16_max, 1, &half_ops[1][1]);
    MPI_Op_create(u8_sum, 1, &u8_sum_op);
    half_ops_ready = 1;
}

static void type_and_op(sov_dtype dt, sov_redop rop, MPI_Datatype *type, MPI_Op *op) {
    int max = rop == SOV_MAX;
    *type = MPI_DATATYPE_NULL; /* every dtype is handled below; this keeps -O3's flow analysis quiet */
    *op = MPI_OP_NULL;
    switch (dt) {
    case SOV_F32: *type = MPI_FLOAT; *op = max ? MPI_MAX : MPI_SUM; return;
    case SOV_F64: *type = MPI_DOUBLE; *op = max ? MPI_MAX : MPI_SUM; return;
    case SOV_U8: *type = MPI_UNSIGNED_CHAR; *op = u8_sum_op; return;
    case SOV_BF16: *type = MPI_UINT16_T; *op = half_ops[0][max]; return;
    case SOV_F16: *type = MPI_UINT16_T; *op = half_ops[1][max]; return;
    default: return; /* comm.c refuses the other types */
    }
}

/* Divides by the number of ranks after a sum (AVG). */
static void divide(void *buf, size_t count, sov_dtype dt, int n) {
    const void *src[1] = {buf};
    sov_reduce(buf, src, 1, count, dt, SOV_AVG, n);
}

static int allreduce(MPI_Comm comm, const sov_op *op) {
    MPI_Datatype type;
    MPI_Op mop;
    type_and_op(op->dtype, op->redop, &type, &mop);
    size_t esz = sov_dtype_size(op->dtype);
    for (size_t off = 0; off < op->count; off += MAX_SLICE) {
        size_t n = op->count - off < MAX_SLICE ? op->count - off : MAX_SLICE;
        const void *sd = op->send == op->recv ? MPI_IN_PLACE : (const char *)op->send + off * esz;
        int err = MPI_Allreduce(sd, (char *)op->recv + off * esz, (int)n, type, mop, comm);
        if (err != MPI_SUCCESS)
            return err;
    }
    return MPI_SUCCESS;
}

static int reduce_scatter(MPI_Comm comm, const sov_op *op) {
    MPI_Datatype type;
    MPI_Op mop;
    type_and_op(op->dtype, op->redop, &type, &mop);
    return MPI_Reduce_scatter_block(op->send, op->recv, (int)op->count, type, mop, comm);
}

static int broadcast(MPI_Comm comm, const sov_op *op) {
    size_t bytes = op->count * sov_dtype_size(op->dtype);
    for (size_t off = 0; off < bytes; off += MAX_SLICE) {
        size_t n = bytes - off < MAX_SLICE ? bytes - off : MAX_SLICE;
        int err = MPI_Bcast((char *)op->recv + off, (int)n, MPI_BYTE, op->root, comm);
        if (err != MPI_SUCCESS)
            return err;
    }
    return MPI_SUCCESS;
}

static int allgather(MPI_Comm comm, int rank, const sov_op *op) {
    size_t bytes = op->count * sov_dtype_size(op->dtype);
    const void *sd = op->send == (const char *)op->recv + (size_t)rank * bytes ? MPI_IN_PLACE : op->send;
    return MPI_Allgather(sd, (int)bytes, MPI_BYTE, op->recv, (int)bytes, MPI_BYTE, comm);
}

sov_status sov_mpi_collective(const void *mpi_comm, const sov_op *op) {
    MPI_Comm comm = *(const MPI_Comm *)mpi_comm;
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    size_t bytes = op->count * sov_dtype_size(op->dtype);
    if ((op->kind == OP_ALLGATHER || op->kind == OP_REDUCE_SCATTER) && bytes > INT_MAX)
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: MPI %s of %zu bytes per rank exceeds 2 GiB", rank,
                        sov_op_name(op->kind), bytes);
    create_half_ops();
    int err = MPI_SUCCESS;
    switch (op->kind) {
    case OP_ALLREDUCE: err = allreduce(comm, op); break;
    case OP_REDUCE_SCATTER: err = reduce_scatter(comm, op); break;
    case OP_BROADCAST: err = broadcast(comm, op); break;
    case OP_ALLGATHER: err = allgather(comm, rank, op); break;
    case OP_BARRIER: err = MPI_Barrier(comm); break;
    }
    if (err != MPI_SUCCESS)
        return mpi_error(rank, op, err);
    if (op->redop == SOV_AVG && (op->kind == OP_ALLREDUCE || op->kind == OP_REDUCE_SCATTER))
        divide(op->recv, op->count, op->dtype, size);
    return SOV_OK;
}

static sov_status mpi_run(sov_comm *c, const sov_op *op) { return sov_mpi_collective(&((mpi_state *)c->impl)->comm, op); }

static void mpi_abort(sov_comm *c, int exit_code) {
    mpi_state *s = c->impl;
    MPI_Abort(s->comm, exit_code);
}

static void mpi_destroy(sov_comm *c) {
    mpi_state *s = c->impl;
    if (!s)
        return;
    MPI_Comm_free(&s->comm);
    free(s);
    c->impl = NULL;
}

static const sov_comm_ops mpi_ops = {.run = mpi_run, .abort = mpi_abort, .destroy = mpi_destroy};

sov_status sov_comm_mpi_init(sov_comm *c) {
    SOV_CHECK(sov_mpi_ensure(c));
    mpi_state *s = sov_calloc(1, sizeof *s);
    if (!s)
        return SOV_ERR_NOMEM;
    c->impl = s;
    c->ops = &mpi_ops;
    MPI_Comm_dup(MPI_COMM_WORLD, &s->comm);
    MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN);
    int rank, size;
    MPI_Comm_rank(s->comm, &rank);
    MPI_Comm_size(s->comm, &size);
    if (rank != c->rank || size != c->size) {
        sov_status st = sov_fail(SOV_ERR_COMM, "MPI says rank %d of %d but the environment says rank %d of %d: "
                                 "launch with `sovtrain launch` or mpirun, not a mix", rank, size, c->rank, c->size);
        mpi_destroy(c);
        return st;
    }
    return SOV_OK;
}
