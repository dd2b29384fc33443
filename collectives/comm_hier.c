/* comm_hier.c: CPU jobs on several hosts. Inside a host the ranks use the shared-memory engine; between hosts
 * one leader per host (its lowest rank) uses MPI.
 *   allreduce  reduce inside the host (shm), leaders allreduce (MPI), leader broadcasts inside the host (shm)
 *   broadcast  root's host first (shm), leaders (MPI), then the other hosts (shm)
 *   barrier    host, leaders, host
 *   allgather, reduce_scatter: MPI over all ranks (their result layout is by global rank, not by host).
 * Hosts are the groups MPI_COMM_TYPE_SHARED finds; SOVTRAIN_HIER_RANKS_PER_HOST=k instead groups ranks r/k,
 * which lets tests run several "hosts" on one machine. */
#include "comm_internal.h"

#include <mpi.h>
#include <stdlib.h>

typedef struct hier {
    MPI_Comm world, local, leaders; /* leaders is MPI_COMM_NULL on non-leaders */
    shm_group *group;
    int local_rank, host;
    int *host_of;       /* [size]: host index of each rank */
    int *local_rank_of; /* [size]: index of each rank inside its host */
} hier;

static sov_status leaders_run(hier *h, sov_op op) {
    if (h->leaders == MPI_COMM_NULL)
        return SOV_OK;
    return sov_mpi_collective(&h->leaders, &op);
}

static sov_status hier_allreduce(sov_comm *c, hier *h, const sov_op *op) {
    sov_op local = *op;
    if (local.redop == SOV_AVG)
        local.redop = SOV_SUM; /* divide once, by the world size, at the end */
    SOV_CHECK(sov_shm_group_run(h->group, &local));
    sov_op across = local;
    across.send = across.recv;
    SOV_CHECK(leaders_run(h, across));
    sov_op bcast = {.kind = OP_BROADCAST, .send = op->recv, .recv = op->recv, .count = op->count,
                    .dtype = op->dtype, .root = 0, .seq = op->seq};
    SOV_CHECK(sov_shm_group_run(h->group, &bcast));
    if (op->redop == SOV_AVG) {
        const void *src[1] = {op->recv};
        sov_reduce(op->recv, src, 1, op->count, op->dtype, SOV_AVG, c->size);
    }
    return SOV_OK;
}

static sov_status hier_broadcast(hier *h, const sov_op *op) {
    int root_host = h->host_of[op->root];
    sov_op local = *op;
    if (h->host == root_host) {
        local.root = h->local_rank_of[op->root];
        SOV_CHECK(sov_shm_group_run(h->group, &local));
    }
    sov_op across = *op;
    across.root = root_host;
    SOV_CHECK(leaders_run(h, across));
    if (h->host != root_host) {
        local.root = 0;
        SOV_CHECK(sov_shm_group_run(h->group, &local));
    }
    return SOV_OK;
}

static sov_status hier_run(sov_comm *c, const sov_op *op) {
    hier *h = c->impl;
    switch (op->kind) {
    case OP_ALLREDUCE: return hier_allreduce(c, h, op);
    case OP_BROADCAST: return hier_broadcast(h, op);
    case OP_BARRIER:
        SOV_CHECK(sov_shm_group_run(h->group, op));
        SOV_CHECK(leaders_run(h, *op));
        return sov_shm_group_run(h->group, op);
    case OP_ALLGATHER:
    case OP_REDUCE_SCATTER: return sov_mpi_collective(&h->world, op);
    }
    return sov_fail(SOV_ERR_INTERNAL, "hier: unknown collective %d", (int)op->kind);
}

static void *hier_alloc(sov_comm *c, size_t bytes) { return sov_shm_group_alloc(((hier *)c->impl)->group, bytes); }
static void hier_free(sov_comm *c, void *p) { sov_shm_group_free(((hier *)c->impl)->group, p); }

static void hier_destroy(sov_comm *c) {
    hier *h = c->impl;
    if (!h)
        return;
    sov_shm_group_destroy(h->group);
    if (h->leaders != MPI_COMM_NULL)
        MPI_Comm_free(&h->leaders);
    if (h->local != MPI_COMM_NULL)
        MPI_Comm_free(&h->local);
    MPI_Comm_free(&h->world);
    free(h->host_of);
    free(h->local_rank_of);
    free(h);
    c->impl = NULL;
}

static const sov_comm_ops hier_ops = {
    .run = hier_run, .alloc = hier_alloc, .free = hier_free, .abort = sov_mpi_abort_world, .destroy = hier_destroy};

static sov_status split_hosts(sov_comm *c, hier *h) {
    const char *per = getenv("SOVTRAIN_HIER_RANKS_PER_HOST");
    int k = per ? atoi(per) : 0;
    if (k > 0)
        MPI_Comm_split(h->world, c->rank / k, c->rank, &h->local);
    else
        MPI_Comm_split_type(h->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &h->local);
    MPI_Comm_rank(h->local, &h->local_rank);
    MPI_Comm_split(h->world, h->local_rank == 0 ? 0 : MPI_UNDEFINED, c->rank, &h->leaders);
    if (h->leaders != MPI_COMM_NULL) {
        MPI_Comm_rank(h->leaders, &h->host);
        MPI_Comm_set_errhandler(h->leaders, MPI_ERRORS_RETURN);
    }
    MPI_Bcast(&h->host, 1, MPI_INT, 0, h->local);
    h->host_of = sov_calloc((size_t)c->size, sizeof(int));
    h->local_rank_of = sov_calloc((size_t)c->size, sizeof(int));
    if (!h->host_of || !h->local_rank_of)
        return SOV_ERR_NOMEM;
    MPI_Allgather(&h->host, 1, MPI_INT, h->host_of, 1, MPI_INT, h->world);
    MPI_Allgather(&h->local_rank, 1, MPI_INT, h->local_rank_of, 1, MPI_INT, h->world);
    return SOV_OK;
}

sov_status sov_comm_hier_init(sov_comm *c, const sov_world *world) {
    (void)world;
    SOV_CHECK(sov_mpi_ensure(c));
    hier *h = sov_calloc(1, sizeof *h);
    if (!h)
        return SOV_ERR_NOMEM;
    h->local = h->leaders = MPI_COMM_NULL;
    c->impl = h;
    c->ops = &hier_ops;
    MPI_Comm_dup(MPI_COMM_WORLD, &h->world);
    MPI_Comm_set_errhandler(h->world, MPI_ERRORS_RETURN);
    sov_status st = split_hosts(c, h);
    if (st == SOV_OK)
        st = sov_shm_group_create(&h->group, &h->local, c->rank, c->timeout_s);
    if (st != SOV_OK)
        hier_destroy(c);
    return st;
}
