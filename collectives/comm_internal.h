/* comm_internal.h (internal): what a backend provides to comm.c, and helpers the backends share. */
#ifndef SOV_COMM_INTERNAL_H
#define SOV_COMM_INTERNAL_H

#include "sov_internal.h"
#include <sovtrain/comm.h>

#include <pthread.h>
#include <stdatomic.h>

typedef enum sov_op_kind { OP_ALLREDUCE, OP_BROADCAST, OP_ALLGATHER, OP_REDUCE_SCATTER, OP_BARRIER } sov_op_kind;

/* One collective, as issued. `seq` numbers the collectives of a communicator from 1, in issue order. */
typedef struct sov_op {
    sov_op_kind kind;
    const void *send;
    void *recv;
    size_t count;
    sov_dtype dtype;
    sov_redop redop;
    int root;
    uint64_t seq;
    void *ready_event; /* nccl: a cudaEvent_t the collective must wait for (recorded on the caller's stream) */
} sov_op;

const char *sov_op_name(sov_op_kind kind);

typedef struct sov_comm_ops {
    sov_status (*run)(sov_comm *c, const sov_op *op);
    void *(*alloc)(sov_comm *c, size_t bytes); /* NULL: host memory from sov_aligned_alloc */
    void (*free)(sov_comm *c, void *ptr);
    void (*abort)(sov_comm *c, int exit_code);
    void (*destroy)(sov_comm *c);
    /* Optional: called on the issuing thread as a collective is issued, before it is queued; a failure fails
     * the collective. */
    sov_status (*issued)(sov_comm *c, sov_op *op);
} sov_comm_ops;

/* The asynchronous engine: one progress thread per communicator, started at the first asynchronous call. */
typedef struct sov_async {
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    sov_request *head, *tail;
    int pending;          /* issued and not yet completed */
    int started, stop;
    pthread_t thread;
} sov_async;

struct sov_comm {
    sov_comm_backend backend;
    const sov_comm_ops *ops;
    int rank, size;
    double timeout_s;
    uint64_t seq;         /* collectives issued so far */
    int mpi_initialised;  /* this communicator called MPI_Init, so sov_mpi_release finalises */
    sov_status broken;    /* set once a collective failed: later ones fail at once */
    char broken_msg[512];
    sov_async async;
    /* watchdog (comm_watchdog.c): which collective is running since when */
    _Atomic uint64_t busy_seq; /* 0: none */
    _Atomic int busy_kind;
    _Atomic double busy_since;
    _Atomic int watchdog_stop;
    double watchdog_grace; /* extra seconds for backends that detect their own timeouts and name the ranks */
    pthread_t watchdog;
    int watchdog_running;
    void *stream;          /* sov_comm_set_stream: the caller's CUDA stream, or NULL */
    void *impl;
};

/* The watchdog: a thread that ends the process (exit code 124) when one collective has been running longer than
 * the timeout, saying which; mpirun then ends the other ranks. It backs up blocking MPI and NCCL calls, which
 * cannot time out themselves. */
void sov_watchdog_start(sov_comm *c);
void sov_watchdog_stop(sov_comm *c);

sov_status sov_comm_self_init(sov_comm *c);
sov_status sov_comm_mpi_init(sov_comm *c);
sov_status sov_comm_shm_init(sov_comm *c, const sov_world *world);
sov_status sov_comm_hier_init(sov_comm *c, const sov_world *world);
sov_status sov_comm_nccl_init(sov_comm *c, const sov_world *world);
sov_status sov_comm_tcp_init(sov_comm *c, const sov_world *world);

/* ---- jobs started without mpirun (rendezvous.c) ---- */
struct sockaddr_in;
/* Every rank's `bytes`-byte blob, in rank order, into all (size x bytes), and in addrs[r] the address rank r can be
 * reached at; the ranks meet at MASTER_ADDR:MASTER_PORT, where rank 0 listens, within timeout_s. */
sov_status sov_rendezvous(const sov_world *w, const void *mine, size_t bytes, void *all, struct sockaddr_in *addrs,
                          double timeout_s);
/* 1 when this job was started without mpirun, so its ranks meet through sov_rendezvous rather than MPI. */
int sov_world_without_mpi(const sov_world *w);
/* Socket helpers: a whole send, or a whole receive, before the deadline; a listener (port 0: any free one); a connection,
 * retried until the deadline while nobody listens; TCP_NODELAY. */
sov_status sov_tcp_send(int fd, const void *buf, size_t n, double deadline, const char *what);
sov_status sov_tcp_recv(int fd, void *buf, size_t n, double deadline, const char *what);
sov_status sov_tcp_listen(const struct sockaddr_in *addr, int backlog, int *fd, struct sockaddr_in *bound);
sov_status sov_tcp_connect(const struct sockaddr_in *addr, double deadline, const char *what, int *fd);
void sov_tcp_tune(int fd);

/* The job's secret (job_token.c): loaded once (a bad SOVTRAIN_JOB_TOKEN_FILE fails here, before any connection), and
 * proven on each new connection by both sides, the accepting side's and the connecting side's: neither returns
 * SOV_OK to a peer without it. Without a secret, both return SOV_OK at once (and the job says so once). */
sov_status sov_job_secret_load(void);
sov_status sov_auth_accept(int fd, double deadline, const char *what);
sov_status sov_auth_connect(int fd, double deadline, const char *what);

/* The shared-memory engine over the ranks of one host (comm_shm.c), used by the shm and hier backends.
 * `local` is an MPI communicator of exactly those ranks (passed as a pointer so this header needs no mpi.h);
 * MPI is used only to set up. Ranks and sizes in a group are local. */
typedef struct shm_group shm_group;
sov_status sov_shm_group_create(shm_group **out, const void *local_mpi_comm, int global_rank, double timeout_s);
sov_status sov_shm_group_run(shm_group *g, const sov_op *op);
void *sov_shm_group_alloc(shm_group *g, size_t bytes);
void sov_shm_group_free(shm_group *g, void *ptr);
void sov_shm_group_destroy(shm_group *g);

/* One collective with Open MPI on the given MPI communicator (passed as a pointer to an MPI_Comm). */
sov_status sov_mpi_collective(const void *mpi_comm, const sov_op *op);

/* Finalises MPI when this communicator initialised it (after the backend's destroy, or a failed init). */
void sov_mpi_release(sov_comm *c);
/* Ends every rank of the job (MPI_Abort on MPI_COMM_WORLD): the abort of the backends built on MPI. */
void sov_mpi_abort_world(sov_comm *c, int exit_code);

/* Initialises MPI once per process (thread level SERIALIZED: collectives may run on the progress thread). */
sov_status sov_mpi_ensure(sov_comm *c);

/* out[i] = op over k = 0..n_in-1 of in[k][i], always in rank order k = 0, 1, ..., accumulating bf16/f16 in f32,
 * then divided by `divisor` (for averages) before the single final rounding. out may alias any in[k]. */
void sov_reduce(void *out, const void *const *in, int n_in, size_t count, sov_dtype dt, sov_redop op,
                int divisor);

/* Runs op synchronously or queues it on the progress thread (comm_async.c). */
sov_status sov_async_submit(sov_comm *c, const sov_op *op, sov_request **req);
sov_status sov_async_drain(sov_comm *c); /* waits until every queued request has completed */
void sov_async_shutdown(sov_comm *c);

#endif
