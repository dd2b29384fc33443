/* comm_mpi.c: the portable backend, Open MPI's collectives on a private duplicate of MPI_COMM_WORLD.
 * MPI takes int counts, so large operations are issued in slices of at most MAX_SLICE elements. */
#include "comm_internal.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>

#define MAX_SLICE ((size_t)1 << 30)

typedef struct mpi_state {
    MPI_Comm comm;
    int we_initialised; /* MPI_Finalize on destroy only when we called MPI_Init */
} mpi_state;

static sov_status mpi_error(const sov_comm *c, const char *op, int err) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return sov_fail(SOV_ERR_COMM, "rank %d: MPI %s failed: %s", c->rank, op, msg);
}

static sov_status mpi_type(const sov_comm *c, sov_dtype dt, MPI_Datatype *out) {
    switch (dt) {
    case SOV_F32: *out = MPI_FLOAT; return SOV_OK;
    case SOV_F64: *out = MPI_DOUBLE; return SOV_OK;
    case SOV_U8: *out = MPI_UNSIGNED_CHAR; return SOV_OK;
    default:
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: the MPI backend has no %s reductions yet (use f32)", c->rank,
                        sov_dtype_name(dt));
    }
}

static void scale(void *buf, size_t count, sov_dtype dt, double factor) {
    if (dt == SOV_F32)
        for (size_t i = 0; i < count; i++)
            ((float *)buf)[i] *= (float)factor;
    else if (dt == SOV_F64)
        for (size_t i = 0; i < count; i++)
            ((double *)buf)[i] *= factor;
}

static sov_status mpi_allreduce(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                sov_redop op) {
    mpi_state *s = c->impl;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    SOV_CHECK(mpi_type(c, dt, &type));
    MPI_Op mop = op == SOV_MAX ? MPI_MAX : MPI_SUM;
    size_t esz = sov_dtype_size(dt);
    for (size_t off = 0; off < count; off += MAX_SLICE) {
        size_t n = count - off < MAX_SLICE ? count - off : MAX_SLICE;
        char *r = (char *)recv + off * esz;
        const void *sd = send == recv ? MPI_IN_PLACE : (const char *)send + off * esz;
        int err = MPI_Allreduce(sd, r, (int)n, type, mop, s->comm);
        if (err != MPI_SUCCESS)
            return mpi_error(c, "allreduce", err);
    }
    if (op == SOV_AVG)
        scale(recv, count, dt, 1.0 / c->size);
    return SOV_OK;
}

static sov_status mpi_broadcast(sov_comm *c, void *buf, size_t count, sov_dtype dt, int root) {
    mpi_state *s = c->impl;
    size_t bytes = count * sov_dtype_size(dt);
    for (size_t off = 0; off < bytes; off += MAX_SLICE) {
        size_t n = bytes - off < MAX_SLICE ? bytes - off : MAX_SLICE;
        int err = MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, s->comm);
        if (err != MPI_SUCCESS)
            return mpi_error(c, "broadcast", err);
    }
    return SOV_OK;
}

static sov_status mpi_allgather(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt) {
    mpi_state *s = c->impl;
    size_t bytes = count * sov_dtype_size(dt);
    if (bytes > INT_MAX)
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: MPI allgather of %zu bytes per rank exceeds 2 GiB", c->rank,
                        bytes);
    const void *sd = send == (const char *)recv + (size_t)c->rank * bytes ? MPI_IN_PLACE : send;
    int err = MPI_Allgather(sd, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, s->comm);
    return err == MPI_SUCCESS ? SOV_OK : mpi_error(c, "allgather", err);
}

static sov_status mpi_reduce_scatter(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                     sov_redop op) {
    mpi_state *s = c->impl;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    SOV_CHECK(mpi_type(c, dt, &type));
    if (count > INT_MAX)
        return sov_fail(SOV_ERR_UNSUPPORTED, "rank %d: MPI reduce_scatter of %zu elements per rank exceeds INT_MAX",
                        c->rank, count);
    int err = MPI_Reduce_scatter_block(send, recv, (int)count, type, op == SOV_MAX ? MPI_MAX : MPI_SUM, s->comm);
    if (err != MPI_SUCCESS)
        return mpi_error(c, "reduce_scatter", err);
    if (op == SOV_AVG)
        scale(recv, count, dt, 1.0 / c->size);
    return SOV_OK;
}

static sov_status mpi_barrier(sov_comm *c) {
    mpi_state *s = c->impl;
    int err = MPI_Barrier(s->comm);
    return err == MPI_SUCCESS ? SOV_OK : mpi_error(c, "barrier", err);
}

static void mpi_destroy(sov_comm *c) {
    mpi_state *s = c->impl;
    if (!s)
        return;
    MPI_Comm_free(&s->comm);
    if (s->we_initialised)
        MPI_Finalize();
    free(s);
}

static void mpi_abort(sov_comm *c, int exit_code) {
    mpi_state *s = c->impl;
    MPI_Abort(s->comm, exit_code);
}

static const sov_comm_ops mpi_ops = {
    .abort = mpi_abort,
    .allreduce = mpi_allreduce,
    .broadcast = mpi_broadcast,
    .allgather = mpi_allgather,
    .reduce_scatter = mpi_reduce_scatter,
    .barrier = mpi_barrier,
    .destroy = mpi_destroy,
};

sov_status sov_comm_mpi_init(sov_comm *c) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
        int provided;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return sov_fail(SOV_ERR_COMM, "rank %d: MPI_Init failed: start multi-rank jobs with `sovtrain launch` "
                            "(or mpirun)", c->rank);
    }
    mpi_state *s = sov_calloc(1, sizeof *s);
    if (!s)
        return SOV_ERR_NOMEM;
    s->we_initialised = !initialised;
    MPI_Comm_dup(MPI_COMM_WORLD, &s->comm);
    MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN);
    c->impl = s;
    c->ops = &mpi_ops;
    int rank, size;
    MPI_Comm_rank(s->comm, &rank);
    MPI_Comm_size(s->comm, &size);
    if (rank != c->rank || size != c->size) {
        sov_status st = sov_fail(SOV_ERR_COMM, "MPI says rank %d of %d but the environment says rank %d of %d: "
                                 "launch with `sovtrain launch` or mpirun, not a mix", rank, size, c->rank, c->size);
        mpi_destroy(c);
        c->impl = NULL;
        return st;
    }
    return SOV_OK;
}
