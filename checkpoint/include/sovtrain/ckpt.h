/* ckpt.h: checkpoints of a data-parallel job: asynchronous, compressed, checksummed, atomic, and loadable at
 * any world size. The format is specified in docs/checkpoint-format.md.
 *
 * Saving. Every rank calls sov_ckpt_save at the same step with the same state (data-parallel state is
 * replicated). Each rank snapshots only its 1/N share of the state (one copy, in 64 MiB blocks) and returns; a
 * writer thread, started once the first block is copied, compresses that share and writes
 * DIR/step-<N>.partial/rank-<r>.bin, fsyncs it, and reports it durable with rank-<r>.json. Rank 0's writer then
 * writes manifest.json, renames the directory to DIR/step-<N>, fsyncs the parent, replaces DIR/latest atomically,
 * and only then removes checkpoints beyond the newest `keep`. A crash at any point
 * leaves the previous checkpoint the latest one. The directory must be visible to every rank. Between two saves
 * the ranks must synchronise after rank 0's sov_ckpt_wait (sovtrain train broadcasts the next save_id from rank
 * 0), because rank 0's commit removes leftover partial directories.
 *
 * Loading. Any rank of any world size opens a checkpoint, and reads any buffer whole; every chunk is verified
 * against its checksums on the way. sov_ckpt_find picks the newest checkpoint that verifies. */
#ifndef SOV_CKPT_H
#define SOV_CKPT_H

#include <sovtrain/runtime.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* written (docs/checkpoint-format.md): 2 added plane coding 2; 3 puts every chunk of a data file at a multiple
 * of 4096 bytes, zero-padded */
#define SOV_CKPT_FORMAT_VERSION 3
#define SOV_CKPT_FORMAT_VERSION_OLDEST 1 /* the oldest still read */
#define SOV_CKPT_CHUNK_ALIGN 4096        /* from version 3 */
#define SOV_CKPT_MAX_BUFFERS 4

/* Element types a buffer may hold: f32 (optimizer state, master weights) or bf16 (weights of a bf16 job). */
typedef enum sov_ckpt_dtype { SOV_CKPT_F32 = 0, SOV_CKPT_BF16 = 1 } sov_ckpt_dtype;

typedef struct sov_ckpt_buffer {
    const char *name;     /* "params", "adamw.m", ... */
    void *data;           /* count elements of dtype */
    size_t count;
    sov_ckpt_dtype dtype; /* f32 unless set */
} sov_ckpt_buffer;

SOV_API size_t sov_ckpt_dtype_bytes(sov_ckpt_dtype dtype);
SOV_API const char *sov_ckpt_dtype_name(sov_ckpt_dtype dtype); /* "f32", "bf16": as the manifest spells them */

typedef struct sov_ckpt_state {
    long step;
    int num_buffers;
    sov_ckpt_buffer buffers[SOV_CKPT_MAX_BUFFERS];
    const sov_tensor *tensors; /* views of buffers[0] (the parameters), for export */
    int num_tensors;
    const json_t *meta;        /* whatever resuming needs besides the buffers: config, optimizer scalars */
} sov_ckpt_state;

/* Raw bytes per chunk unless told otherwise (the trainer's and bench/ckpt's value). The development VM's disk reads
 * 2 MiB requests as fast as 4 MiB ones (O_DIRECT, 2 in flight, medians of 25: 1.84 vs 1.86 GB/s; 1 MiB: 1.53), and
 * bench/ckpt's saves ran as fast at 2 MiB. Half the chunk halves a restore's read buffers (fresh pages the kernel
 * must zero), its wait for the first chunk and the decode left after the last read: the trained MLP's 22 MB state
 * restored 15 % faster than with 4 MiB chunks (alternated scratch runs, medians of 30, three runs; bench/ckpt:
 * 1.13-1.46x torch.load against 0.93-1.29x), with the large states' save and restore unchanged, the same ratio. */
#define SOV_CKPT_DEFAULT_CHUNK_BYTES ((size_t)2 << 20)

typedef struct sov_ckpt_options {
    int keep;                /* checkpoints kept after a new one is durable (>= 1) */
    int threads;             /* compression threads per rank */
    size_t chunk_bytes;      /* raw bytes per chunk, 4 KiB .. 256 MiB; otherwise SOV_CKPT_DEFAULT_CHUNK_BYTES */
    double commit_timeout_s; /* rank 0 waits this long for the other ranks' parts */
    /* Buffers in GPU memory: the snapshot copies them with copy_to_host into staging memory from alloc_host
     * (pinned, so the copy runs at the bus's speed and the training stall is one device-to-host copy). All NULL:
     * the buffers are host memory (memcpy into aligned host memory). copy_to_host must have finished copying when
     * it returns: the encoders start on each copied piece at once (as many as cores are free of the copy). */
    sov_status (*copy_to_host)(void *ctx, void *dst, const void *src, size_t bytes);
    void *(*alloc_host)(void *ctx, size_t bytes);
    void (*free_host)(void *ctx, void *ptr);
    void *memory_ctx;
} sov_ckpt_options;

/* ---- writing ---- */
typedef struct sov_ckpt_writer sov_ckpt_writer;

SOV_API sov_status sov_ckpt_writer_open(sov_ckpt_writer **out, const char *dir, int rank, int world_size,
                                const sov_ckpt_options *options);
/* Allocates the snapshot's staging memory for saves of `state`'s shape now, so that the first save does not pay
 * for it (pinned memory of a GPU job takes ~0.7 ms per MB to allocate). Optional; not while a save is running. */
SOV_API sov_status sov_ckpt_writer_reserve(sov_ckpt_writer *w, const sov_ckpt_state *state);
/* Waits for the previous save (its wait in *waited_s), snapshots this rank's share (its time in *stall_s) and
 * starts writing. When the previous save failed, returns its error and starts nothing (call sov_ckpt_wait first
 * to handle that failure separately). `save_id` must be the same on every rank for one save and differ between
 * saves (it keeps a crashed attempt's leftovers out of a new checkpoint). */
SOV_API sov_status sov_ckpt_save(sov_ckpt_writer *w, const sov_ckpt_state *state, uint64_t save_id, double *stall_s,
                         double *waited_s);
/* Waits for the save in flight (on rank 0 until it is committed). Returns its status; on success and when
 * `path` is given, where it went. */
SOV_API sov_status sov_ckpt_wait(sov_ckpt_writer *w, char *path, size_t cap);
/* After sov_ckpt_wait returned SOV_OK: the seconds the save took from the sov_ckpt_save call (its wait for the
 * save before excluded) until this rank's part was durable and, on rank 0, the checkpoint committed and DIR/latest
 * naming it. Removing checkpoints beyond `keep` comes after that and is not counted. Meaningless after a failed
 * save. */
SOV_API double sov_ckpt_save_seconds(const sov_ckpt_writer *w);
SOV_API void sov_ckpt_writer_close(sov_ckpt_writer *w); /* waits, then frees */

/* ---- reading ---- */
typedef struct sov_ckpt sov_ckpt;

/* Opens the checkpoint directory `path` (DIR/step-N): reads and verifies the manifest. */
SOV_API sov_status sov_ckpt_open(const char *path, sov_ckpt **out);
SOV_API void sov_ckpt_close(sov_ckpt *c);
SOV_API long sov_ckpt_step(const sov_ckpt *c);
SOV_API const json_t *sov_ckpt_manifest(const sov_ckpt *c);
SOV_API const char *sov_ckpt_path(const sov_ckpt *c);
/* Elements of buffer `name`, or 0 when the checkpoint has none. */
SOV_API size_t sov_ckpt_buffer_count(const sov_ckpt *c, const char *name);
/* Bytes per element of a listed buffer: 2 for bf16, 4 for f32. */
SOV_API size_t sov_ckpt_buffer_elem_bytes(const sov_ckpt *c, const char *name);
/* Decodes buffer `name`, which must hold count elements of dtype, into dst, verifying every chunk. */
SOV_API sov_status sov_ckpt_read_buffer(sov_ckpt *c, const char *name, sov_ckpt_dtype dtype, void *dst, size_t count);
/* The same for several buffers in one pass: their chunks are read in file order by one set of threads, so a
 * restore of a model and its optimizer state pays for one start-up and keeps every thread busy. */
SOV_API sov_status sov_ckpt_read_buffers(sov_ckpt *c, const sov_ckpt_buffer *buffers, int num_buffers);
/* Reads and checks every chunk of every file. Stops at the first damage, naming file and chunk. */
SOV_API sov_status sov_ckpt_verify(sov_ckpt *c);

/* Reports why a candidate was skipped while searching (may be NULL). */
typedef void (*sov_ckpt_note_fn)(void *ctx, const char *message);
/* The newest checkpoint under `dir` that opens and verifies: DIR/latest first, then every DIR/step-N from the
 * newest down. SOV_ERR_IO with "no checkpoint" when there is none at all. */
SOV_API sov_status sov_ckpt_find(const char *dir, char *path, size_t cap, sov_ckpt_note_fn note, void *ctx);

/* Steps of the complete checkpoints under dir (step-N directories, newest first). Returns the count (<= cap). */
SOV_API int sov_ckpt_list_steps(const char *dir, long *steps, int cap);

/* Writes the tensors of buffer "params" to a safetensors file (F32, little-endian): the open exit path. */
SOV_API sov_status sov_ckpt_export_safetensors(sov_ckpt *c, const char *out_path);

/* Fills the model's tensors (names, shapes) in params from a safetensors file of F32 tensors with exactly those
 * names and shapes: a model seeded from an exported checkpoint or another framework. */
SOV_API sov_status sov_safetensors_load(const char *path, const sov_tensor *tensors, int num_tensors, float *params);

/* `sovtrain ckpt ARGS...` (argv[0] is "ckpt"). Returns the process exit code. */
SOV_API int sov_ckpt_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
