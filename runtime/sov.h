/* sov.h: the base every sovtrain module shares: status codes, error messages, logging, and who this rank is.
 *
 * Errors: a failing function records one human message (what failed, where, what to do) with sov_fail() and
 * returns a sov_status; callers propagate it with SOV_CHECK, as NCCL's NCCLCHECK does. sov_last_error() returns
 * the message of the most recent failure on the calling thread. Library code never calls exit(). */
#ifndef SOV_H
#define SOV_H

#include <stddef.h>
#include <stdint.h>

#ifndef SOVTRAIN_VERSION
#define SOVTRAIN_VERSION "0.0.0"
#endif

typedef enum sov_status {
    SOV_OK = 0,
    SOV_ERR_INVALID,     /* a bad argument, flag or configuration */
    SOV_ERR_IO,          /* a file or device operation failed */
    SOV_ERR_FORMAT,      /* input data is malformed, truncated or of an unknown version */
    SOV_ERR_NOMEM,       /* an allocation failed */
    SOV_ERR_COMM,        /* a collective or the transport under it failed */
    SOV_ERR_UNSUPPORTED, /* valid, but not built or not implemented for this case */
    SOV_ERR_INTERNAL     /* a broken invariant: a bug in sovtrain */
} sov_status;

const char *sov_strerror(sov_status status);

/* Records <message> (and file:line) as the calling thread's last error and returns `status`. */
sov_status sov_fail_at(sov_status status, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define sov_fail(status, ...) sov_fail_at((status), __FILE__, __LINE__, __VA_ARGS__)

/* On x86-64, a function so marked is compiled for AVX-512, AVX2 and the baseline, and the loader picks the best
 * the CPU has: for the plain loops GCC vectorises (byte planes, GELU, LayerNorm). Files using it are built with
 * -ffp-contract=off so that no clone fuses a multiply-add: every clone gives the same bits. Not under
 * ThreadSanitizer, whose instrumented clone resolvers run before its runtime is up and crash the program at load. */
#if defined(__x86_64__) && defined(__has_attribute) && !defined(__SANITIZE_THREAD__)
#if __has_attribute(target_clones)
#define SOV_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef SOV_SIMD_CLONES
#define SOV_SIMD_CLONES
#endif

/* The last error message recorded on this thread ("" when none), and the source location that recorded it. */
const char *sov_last_error(void);
const char *sov_last_error_where(void);

#define SOV_CHECK(call)                      \
    do {                                     \
        sov_status sov_check_status_ = (call); \
        if (sov_check_status_ != SOV_OK)     \
            return sov_check_status_;        \
    } while (0)

/* Allocation that records a sov_fail message naming the caller on failure. Free with free(). */
void *sov_malloc_at(size_t bytes, const char *file, int line);
void *sov_calloc_at(size_t count, size_t size, const char *file, int line);
void *sov_aligned_alloc_at(size_t bytes, const char *file, int line); /* 64-byte aligned, zeroed */
#define sov_malloc(bytes) sov_malloc_at((bytes), __FILE__, __LINE__)
#define sov_calloc(count, size) sov_calloc_at((count), (size), __FILE__, __LINE__)
#define sov_aligned_alloc(bytes) sov_aligned_alloc_at((bytes), __FILE__, __LINE__)

/* ---- who this process is in the job ---- */
typedef struct sov_world {
    int rank, size;             /* global rank and number of ranks */
    int local_rank, local_size; /* position among the ranks on this host */
    const char *source;         /* where the identity came from: "openmpi", "torchrun", "single" */
} sov_world;

/* The GPUs of this host that its ranks share out, given the `visible` count this process sees:
 * SOVTRAIN_HOST_GPUS where `sovtrain launch` pinned one GPU per rank (each rank then sees only its own), else
 * `visible`. A GPU job needs at least local_size of them (NCCL refuses two ranks on one GPU). */
int sov_host_gpus(int visible);

/* Reads the rank identity from Open MPI's variables (OMPI_COMM_WORLD_*), else torchrun's (RANK, WORLD_SIZE,
 * LOCAL_RANK, LOCAL_WORLD_SIZE); without either it is a single rank. Fails on inconsistent values. */
sov_status sov_world_from_env(sov_world *world);

/* ---- logging: human lines on stderr ---- */
/* Lines are prefixed "[rank N] " in multi-rank jobs, unless the launcher tags output itself
 * (it sets SOVTRAIN_TAGGED_OUTPUT=1). */
void sov_log_set_rank(int rank, int world_size);
/* sov_log: progress and information, printed by rank 0 only. sov_log_error: printed by every rank. */
void sov_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sov_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parses `text` as a whole decimal integer in [lo, hi]; the error names `what` (a flag or field) and the range. */
sov_status sov_parse_long(const char *what, const char *text, long lo, long hi, long *out);

/* The first line of a small text file, without its newline; "" (and 0) when it cannot be read. */
int sov_read_line(const char *path, char *out, size_t cap);

/* Creates directory `path` and its missing parents (mode 0755). */
sov_status sov_mkdir_p(const char *path);

/* Monotonic wall clock in seconds. */
double sov_now(void);

/* The CPUs this process may run on: its affinity mask (a container's or a binding's share, not the machine's), or
 * the online count where the mask cannot be read. At least 1. */
int sov_usable_cpus(void);

#endif
