/* comm.h: the one communicator API the runtime uses for collectives.
 *
 * Every rank of the job calls the same operations in the same order. Counts are in elements of `dtype`: f32,
 * bf16, f16, f64 or u8 (u8: sum only; other types fail with SOV_ERR_UNSUPPORTED). bf16 and f16 are reduced in f32 and rounded once (round to nearest even).
 *
 * Backends:
 *   self  a job of one rank: every collective is the identity (a copy when out of place)
 *   shm   ranks on one host, through POSIX shared memory; zero-copy on buffers from sov_comm_alloc; reductions
 *         in rank order, so every rank gets the same bits, run after run
 *   mpi   Open MPI's collectives, any placement (the portable fallback)
 *   hier  several hosts: shm inside each host, MPI between hosts
 *   nccl  GPU buffers (CUDA builds only): NCCL on a dedicated stream; host buffers (small control messages)
 *         are staged through device memory. A one-rank nccl communicator needs no MPI; ranks started without
 *         mpirun share NCCL's id through the rendezvous at MASTER_ADDR:MASTER_PORT.
 *   tcp   ranks started without mpirun (a Kubernetes indexed Job: torchrun-style RANK, WORLD_SIZE, MASTER_ADDR,
 *         MASTER_PORT): they meet at MASTER_ADDR:MASTER_PORT, then reduce around a ring of TCP connections
 * AUTO picks self for one rank; without mpirun, nccl for GPU buffers, else tcp; under mpirun, nccl for GPU
 * buffers, shm when all ranks share a host, else hier.
 *
 * Every operation has a blocking form and an asynchronous one (sov_comm_i*: a request to wait for or test).
 * Requests complete in the order they were issued. A collective that does not complete within the timeout
 * fails with SOV_ERR_COMM and a message naming the ranks that never arrived (where the backend can see them). */
#ifndef SOV_COMM_H
#define SOV_COMM_H

#include <sovtrain/sov.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sov_redop { SOV_SUM, SOV_AVG, SOV_MAX } sov_redop;
typedef enum sov_comm_backend {
    SOV_COMM_AUTO,
    SOV_COMM_SELF,
    SOV_COMM_SHM,
    SOV_COMM_MPI,
    SOV_COMM_HIER,
    SOV_COMM_NCCL,
    SOV_COMM_TCP
} sov_comm_backend;

typedef struct sov_comm sov_comm;
typedef struct sov_request sov_request;

typedef struct sov_comm_config {
    sov_comm_backend backend; /* SOV_COMM_AUTO unless overridden (--comm, SOVTRAIN_COMM) */
    double timeout_s;         /* a collective not complete after this long fails; 0 means 300 s */
    int gpu;                  /* 1 when buffers live on the GPU (selects nccl under AUTO) */
} sov_comm_config;


/* Parses "auto", "self", "shm", "mpi", "hier", "nccl" or "tcp". */
SOV_API sov_status sov_comm_backend_parse(const char *name, sov_comm_backend *out);
SOV_API const char *sov_comm_backend_name(sov_comm_backend backend);

/* Creates the communicator of all ranks in `world`. MPI is initialised here when a backend needs it (also for
 * shm, whose set-up exchanges names through MPI) and finalised by sov_comm_destroy. */
SOV_API sov_status sov_comm_init(sov_comm **out, const sov_world *world, const sov_comm_config *config);
SOV_API void sov_comm_destroy(sov_comm *comm);
SOV_API sov_comm_backend sov_comm_backend_of(const sov_comm *comm);
SOV_API int sov_comm_rank(const sov_comm *comm);
SOV_API int sov_comm_size(const sov_comm *comm);

/* Memory the backend uses without extra copies (shared memory for shm, device memory for nccl); 64-byte aligned
 * and zeroed. Returns NULL (with sov_last_error set) when it cannot be had. Where the backend has such memory,
 * both calls first wait for the collectives in flight on comm; call them from the thread that issues comm's
 * collectives. */
SOV_API void *sov_comm_alloc(sov_comm *comm, size_t bytes);
SOV_API void sov_comm_free(sov_comm *comm, void *ptr);

/* recv = op over ranks of send (count elements); send == recv is in place. MAX and AVG need a float dtype. */
SOV_API sov_status sov_comm_allreduce(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                              sov_redop op);
/* buf (count elements) on every rank = buf on `root`. */
SOV_API sov_status sov_comm_broadcast(sov_comm *comm, void *buf, size_t count, sov_dtype dtype, int root);
/* recv (size x count elements): block r = send of rank r. send may be block `rank` of recv (in place). */
SOV_API sov_status sov_comm_allgather(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype);
/* recv (count elements) = block `rank` of op over ranks of send (size x count elements). */
SOV_API sov_status sov_comm_reduce_scatter(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                                   sov_redop op);
SOV_API sov_status sov_comm_barrier(sov_comm *comm);

/* Asynchronous forms: start the operation and return a request. The buffers must stay untouched until the
 * request completes. Every request must be passed to sov_comm_wait (which frees it) exactly once. */
SOV_API sov_status sov_comm_iallreduce(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                               sov_redop op, sov_request **req);
SOV_API sov_status sov_comm_ibroadcast(sov_comm *comm, void *buf, size_t count, sov_dtype dtype, int root,
                               sov_request **req);
SOV_API sov_status sov_comm_iallgather(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                               sov_request **req);
SOV_API sov_status sov_comm_ireduce_scatter(sov_comm *comm, const void *send, void *recv, size_t count, sov_dtype dtype,
                                    sov_redop op, sov_request **req);
SOV_API sov_status sov_comm_ibarrier(sov_comm *comm, sov_request **req);
/* Waits for the request, frees it, and returns the operation's status. */
SOV_API sov_status sov_comm_wait(sov_request *req);
/* Sets *done to 1 when the request has completed (then sov_comm_wait returns at once). */
SOV_API sov_status sov_comm_test(sov_request *req, int *done);

/* GPU jobs: the CUDA stream (a cudaStream_t) on which the caller computes the buffers it passes. Every
 * collective issued afterwards runs after the work issued on that stream up to the call (nccl records a CUDA
 * event there and makes its own stream wait for it), so gradients can be reduced while later layers' backward
 * still runs. Backends without GPU buffers ignore it. */
SOV_API void sov_comm_set_stream(sov_comm *comm, void *cuda_stream);

/* Ends the whole job after an unrecoverable error on this rank, so that no other rank waits forever in a
 * collective this rank will never join. A one-rank communicator just returns. */
SOV_API void sov_comm_abort(sov_comm *comm, int exit_code);

/* ---- helpers shared by backends and tests ---- */
SOV_API float sov_bf16_to_f32(uint16_t h);
SOV_API uint16_t sov_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */
SOV_API float sov_f16_to_f32(uint16_t h);
SOV_API uint16_t sov_f32_to_f16(float f);  /* round to nearest even; overflow to infinity */
/* n elements of bf16 or f16 (dt) to f32 and back, as the functions above convert one */
SOV_API void sov_widen_half(float *dst, const uint16_t *src, size_t n, sov_dtype dt);
SOV_API void sov_narrow_half(uint16_t *dst, const float *src, size_t n, sov_dtype dt);

#ifdef __cplusplus
}
#endif

#endif
