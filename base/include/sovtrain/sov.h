/* sov.h: the ground every sovtrain module stands on: status codes and error messages, element types, logging,
 * and who this rank is in the job. Part of libsovtrain's public API.
 *
 * Errors: a failing function records one human message (what failed, where, what to do) with sov_fail() and
 * returns a sov_status; callers propagate it with SOV_CHECK, as NCCL's NCCLCHECK does. sov_last_error() returns
 * the message of the most recent failure on the calling thread. Library code never calls exit(). */
#ifndef SOV_H
#define SOV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the functions libsovtrain exports; everything else in the library is hidden. */
#if defined(__GNUC__)
#define SOV_API __attribute__((visibility("default")))
#else
#define SOV_API
#endif

#if defined(__GNUC__)
#define SOV_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define SOV_PRINTF(fmt, args)
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

/* The library's version, "MAJOR.MINOR.PATCH". */
SOV_API const char *sov_version(void);

SOV_API const char *sov_strerror(sov_status status);

/* Records <message> (and file:line) as the calling thread's last error and returns `status`. A model plug-in or
 * any other caller may record its own failures the same way. */
SOV_API sov_status sov_fail_at(sov_status status, const char *file, int line, const char *fmt, ...)
    SOV_PRINTF(4, 5);
#define sov_fail(status, ...) sov_fail_at((status), __FILE__, __LINE__, __VA_ARGS__)

/* The last error message recorded on this thread ("" when none), and the source location that recorded it. */
SOV_API const char *sov_last_error(void);
SOV_API const char *sov_last_error_where(void);

#define SOV_CHECK(call)                        \
    do {                                       \
        sov_status sov_check_status_ = (call); \
        if (sov_check_status_ != SOV_OK)       \
            return sov_check_status_;          \
    } while (0)

/* ---- element types: of collectives' buffers and of checkpointed tensors ---- */
typedef enum sov_dtype {
    SOV_F32,  /* IEEE binary32 */
    SOV_BF16, /* bfloat16: the high half of an f32 */
    SOV_F16,  /* IEEE binary16 */
    SOV_F64,  /* IEEE binary64 */
    SOV_U8,
    SOV_I64,
    SOV_I32,
    SOV_I16,
    SOV_I8,
    SOV_BOOL  /* one byte, 0 or 1 */
} sov_dtype;
#define SOV_NUM_DTYPES 10

/* Bytes per element (0 for a value that is not a sov_dtype), and the lower-case name ("f32", "bf16", "i64", "bool",
 * "?" when unknown). */
SOV_API size_t sov_dtype_size(sov_dtype dtype);
SOV_API const char *sov_dtype_name(sov_dtype dtype);
/* Parses a name as sov_dtype_name spells it. */
SOV_API sov_status sov_dtype_parse(const char *name, sov_dtype *out);

/* ---- who this process is in the job ---- */
typedef struct sov_world {
    int rank, size;             /* global rank and number of ranks */
    int local_rank, local_size; /* position among the ranks on this host */
    const char *source;         /* where the identity came from: "openmpi", "torchrun", "single" */
} sov_world;

/* Reads the rank identity from Open MPI's variables (OMPI_COMM_WORLD_*), else torchrun's (RANK, WORLD_SIZE,
 * LOCAL_RANK, LOCAL_WORLD_SIZE); without either it is a single rank. Fails on inconsistent values. */
SOV_API sov_status sov_world_from_env(sov_world *world);

/* The GPUs of this host that its ranks share out, given the `visible` count this process sees:
 * SOVTRAIN_HOST_GPUS where `sovtrain launch` pinned one GPU per rank (each rank then sees only its own), else
 * `visible`. A GPU job needs at least local_size of them (NCCL refuses two ranks on one GPU). */
SOV_API int sov_host_gpus(int visible);

/* ---- logging: human lines on stderr ---- */
/* Lines are prefixed "[rank N] " in multi-rank jobs, unless the launcher tags output itself
 * (it sets SOVTRAIN_TAGGED_OUTPUT=1). */
SOV_API void sov_log_set_rank(int rank, int world_size);
/* sov_log: progress and information, printed by rank 0 only. sov_log_error: printed by every rank. */
SOV_API void sov_log(const char *fmt, ...) SOV_PRINTF(1, 2);
SOV_API void sov_log_error(const char *fmt, ...) SOV_PRINTF(1, 2);

#ifdef __cplusplus
}
#endif

#endif
