/* comm.h: the one communicator API the runtime uses for collectives.
 *
 * Every rank of the job calls the same operations in the same order. Counts are in elements of `dtype`.
 * Backends: "self" (a job of one rank: every collective is a copy), "mpi" (Open MPI, any placement).
 * Reductions are deterministic for a given backend and world size; every rank receives identical bytes. */
#ifndef SOV_COMM_H
#define SOV_COMM_H

#include "sov.h"

typedef enum sov_dtype { SOV_F32, SOV_BF16, SOV_F16, SOV_F64, SOV_U8 } sov_dtype;
typedef enum sov_redop { SOV_SUM, SOV_AVG, SOV_MAX } sov_redop;
typedef enum sov_comm_backend { SOV_COMM_AUTO, SOV_COMM_SELF, SOV_COMM_MPI } sov_comm_backend;

typedef struct sov_comm sov_comm;

size_t sov_dtype_size(sov_dtype dtype);
const char *sov_dtype_name(sov_dtype dtype);

/* Parses "auto", "self" or "mpi" (the --comm flag and SOVTRAIN_COMM). */
sov_status sov_comm_backend_parse(const char *name, sov_comm_backend *out);
const char *sov_comm_backend_name(sov_comm_backend backend);

/* Creates the communicator of all ranks in `world`. AUTO picks self for one rank, else MPI. MPI is initialised
 * here when needed and finalised by sov_comm_destroy. */
sov_status sov_comm_init(sov_comm **out, const sov_world *world, sov_comm_backend backend);
void sov_comm_destroy(sov_comm *comm);
sov_comm_backend sov_comm_backend_of(const sov_comm *comm);
int sov_comm_rank(const sov_comm *comm);
int sov_comm_size(const sov_comm *comm);

/* Memory that the backend can use without extra copies; 64-byte aligned and zeroed. */
void *sov_comm_alloc(sov_comm *comm, size_t bytes);
void sov_comm_free(sov_comm *comm, void *ptr);

/* recv = op over ranks of send (count elements); send == recv is in place. SOV_MAX and SOV_AVG need a float
 * dtype. */
sov_status sov_comm_allreduce(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                              sov_redop op);
/* buf (count elements) on every rank = buf on `root`. */
sov_status sov_comm_broadcast(sov_comm *comm, void *buf, size_t count, sov_dtype dtype, int root);
/* recv (size x count elements): block r = send of rank r. */
sov_status sov_comm_allgather(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype);
/* recv (count elements) = block `rank` of op over ranks of send (size x count elements). */
sov_status sov_comm_reduce_scatter(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                                   sov_redop op);
sov_status sov_comm_barrier(sov_comm *comm);

/* Ends the whole job after an unrecoverable error on this rank, so that no other rank waits forever in a
 * collective this rank will never join. A one-rank communicator just returns. */
void sov_comm_abort(sov_comm *comm, int exit_code);

#endif
