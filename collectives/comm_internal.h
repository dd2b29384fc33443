/* comm_internal.h (internal): what a backend provides to comm.c. */
#ifndef SOV_COMM_INTERNAL_H
#define SOV_COMM_INTERNAL_H

#include "comm.h"

typedef struct sov_comm_ops {
    sov_status (*allreduce)(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt, sov_redop op);
    sov_status (*broadcast)(sov_comm *c, void *buf, size_t count, sov_dtype dt, int root);
    sov_status (*allgather)(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt);
    sov_status (*reduce_scatter)(sov_comm *c, const void *send, void *recv, size_t count, sov_dtype dt,
                                 sov_redop op);
    sov_status (*barrier)(sov_comm *c);
    void (*abort)(sov_comm *c, int exit_code);
    void (*destroy)(sov_comm *c);
} sov_comm_ops;

struct sov_comm {
    sov_comm_backend backend;
    const sov_comm_ops *ops;
    int rank, size;
    void *impl;
};

sov_status sov_comm_self_init(sov_comm *c);
sov_status sov_comm_mpi_init(sov_comm *c);

#endif
