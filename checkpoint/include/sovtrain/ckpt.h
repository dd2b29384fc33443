/* ckpt.h: checkpoints of a training job's state: any number of named tensors of any dtype and shape, each
 * replicated on every rank (data parallel) or sharded (each rank holds a box of it), plus metadata as JSON text.
 * Saves are asynchronous, compressed, checksummed and atomic; a checkpoint loads at any world size, whole or by
 * slice. The format is specified in docs/checkpoint-format.md.
 *
 * Saving. Every rank calls sov_ckpt_save at the same step. Replicated tensors must be the same on every rank
 * (same names, dtypes, shapes and values): the ranks split their bytes, so each writes 1/N of them. A sharded
 * tensor is given by each rank that holds part of it, with the same name, dtype and shape, and its own box; the
 * boxes of all ranks must tile the tensor. Each rank snapshots its share (one copy) and returns; a writer thread,
 * started once the first block is copied, compresses that share and writes DIR/step-<N>.partial/rank-<r>.bin,
 * fsyncs it, and reports it durable with rank-<r>.json. Rank 0's writer then writes manifest.json, renames the
 * directory to DIR/step-<N>, fsyncs the parent, replaces DIR/latest atomically, and only then removes checkpoints
 * beyond the newest `keep`. A crash at any point leaves the previous checkpoint the latest one. The directory must
 * be visible to every rank. Between two saves the ranks must synchronise after rank 0's sov_ckpt_wait (sovtrain
 * train broadcasts the next save_id from rank 0), because rank 0's commit removes leftover partial directories.
 *
 * Loading. Any rank of any world size opens a checkpoint and reads any tensor, or any box of one, into its own
 * memory; every chunk is verified against its checksums on the way. sov_ckpt_find picks the newest checkpoint
 * that verifies. */
#ifndef SOV_CKPT_H
#define SOV_CKPT_H

#include <sovtrain/sov.h>

#ifdef __cplusplus
extern "C" {
#endif

/* written (docs/checkpoint-format.md): 2 added plane coding 2; 3 puts every chunk of a data file at a multiple
 * of 4096 bytes, zero-padded; 4 holds tensors of any dtype, replicated or sharded; 5 is 4 encrypted (only
 * encrypted checkpoints are written as 5, so that older readers still read the others) */
#define SOV_CKPT_FORMAT_VERSION 5
#define SOV_CKPT_FORMAT_VERSION_PLAIN 4 /* what an unencrypted save writes */
#define SOV_CKPT_FORMAT_VERSION_OLDEST 1 /* the oldest still read */
#define SOV_CKPT_CHUNK_ALIGN 4096        /* from version 3 */
#define SOV_CKPT_MAX_DIMS 8
#define SOV_CKPT_MAX_NAME 255            /* bytes of a tensor's name */

/* One tensor of the state, as this rank holds it. */
typedef struct sov_ckpt_tensor {
    const char *name;                 /* unique in the state, 1..SOV_CKPT_MAX_NAME bytes, e.g. "layers.0.weight" */
    sov_dtype dtype;
    int ndim;                         /* 0 (a scalar) .. SOV_CKPT_MAX_DIMS */
    int64_t shape[SOV_CKPT_MAX_DIMS]; /* the whole tensor's */
    const void *data;                 /* this rank's elements, row-major: the whole tensor, or its box */
    int sharded;                      /* 0: replicated (the same on every rank); 1: this rank holds the box below */
    int64_t shard_offset[SOV_CKPT_MAX_DIMS];
    int64_t shard_shape[SOV_CKPT_MAX_DIMS];
} sov_ckpt_tensor;

typedef struct sov_ckpt_state {
    long step;
    int num_tensors;
    const sov_ckpt_tensor *tensors;
    const char *meta_json; /* a JSON object as text, or NULL: whatever resuming needs besides the tensors */
} sov_ckpt_state;

/* Raw bytes per chunk unless told otherwise: requests this large read as fast as larger ones from the disk, and
 * a restore's buffers, its wait for the first chunk and its decode after the last read grow with the chunk. */
#define SOV_CKPT_DEFAULT_CHUNK_BYTES ((size_t)2 << 20)

/* ---- keys: encryption at rest (docs/security.md) ----
 * Each save has a fresh random 32-byte data key; its chunks and metadata are sealed with AES-256-GCM under keys
 * derived from it, and the operator's key wraps it for the manifest. Tensor names, dtypes and shapes stay readable;
 * their values and the metadata do not. */
typedef struct sov_ckpt_key sov_ckpt_key;

/* The operator's key-encryption key from a file: 32 bytes, raw, as 64 hex digits or as base64, in a file that
 * neither group nor others may access. Its id (named in the manifest and in errors) is derived from it. */
SOV_API sov_status sov_ckpt_key_from_file(const char *path, sov_ckpt_key **out);
/* A command (run by /bin/sh) that wraps and unwraps data keys, so that the key-encryption key stays in Vault, an
 * HSM or a KMS: one JSON request on its stdin, one JSON reply on its stdout (docs/security.md). A save runs it
 * once, on rank 0; opening a checkpoint runs it once. */
SOV_API sov_status sov_ckpt_key_from_command(const char *command, sov_ckpt_key **out);
/* A checkpoint's data key, unwrapped by another process (sov_ckpt_data_key): lets one process of a job run the key
 * command and share the result with the others. Opens that checkpoint only; cannot encrypt. */
SOV_API sov_status sov_ckpt_key_from_data_key(const uint8_t data_key[32], sov_ckpt_key **out);
SOV_API void sov_ckpt_key_free(sov_ckpt_key *k);
/* "key file PATH (key id ID)", "key command `CMD`": for messages. */
SOV_API const char *sov_ckpt_key_describe(const sov_ckpt_key *k);

/* ---- signatures: the OpenSSF model signing format (docs/security.md) ----
 * A signed checkpoint's directory holds model.sig: a Sigstore bundle (v0.3) whose in-toto statement lists every
 * file's SHA-256, signed with ECDSA. PyPI's `model_signing verify key` verifies it, and so does
 * sov_ckpt_verify_signature. */
typedef struct sov_ckpt_signer sov_ckpt_signer;

/* An unencrypted ECDSA private key (P-256, P-384 or P-521) in PEM, in a file neither group nor others may access. */
SOV_API sov_status sov_ckpt_signer_from_pem(const char *path, sov_ckpt_signer **out);
SOV_API void sov_ckpt_signer_free(sov_ckpt_signer *s);
/* Checks the signature of checkpoint `path` (DIR/step-N) with the ECDSA public key in PEM file `public_key`, and
 * every file of the directory against the digests it signs. Fails naming the file that does not match, one that
 * is not listed or missing, or saying that the checkpoint is not signed. */
SOV_API sov_status sov_ckpt_verify_signature(const char *path, const char *public_key);

typedef struct sov_ckpt_options {
    int keep;                /* checkpoints kept after a new one is durable (>= 1) */
    int threads;             /* compression threads per rank */
    size_t chunk_bytes;      /* raw bytes per chunk, 4 KiB .. 256 MiB; otherwise SOV_CKPT_DEFAULT_CHUNK_BYTES */
    double commit_timeout_s; /* rank 0 waits this long for the other ranks' parts */
    /* Tensors in GPU memory: the snapshot copies them with copy_to_host into staging memory from alloc_host
     * (pinned, so the copy runs at the bus's speed and the training stall is one device-to-host copy). All NULL:
     * the tensors are in host memory (memcpy into aligned host memory). copy_to_host must have finished copying when
     * it returns: the encoders start on each copied piece at once (as many as cores are free of the copy). */
    sov_status (*copy_to_host)(void *ctx, void *dst, const void *src, size_t bytes);
    void *(*alloc_host)(void *ctx, size_t bytes);
    void (*free_host)(void *ctx, void *ptr);
    void *memory_ctx;
    /* Encryption: every rank gives the same key (NULL: not encrypted). Rank 0 makes each save's data key and wraps
     * it (in the background); the ranks get it through share_key, which must broadcast `bytes` from rank 0 to every
     * rank of the save and is called by each of them inside sov_ckpt_save (required when world_size > 1). */
    const sov_ckpt_key *key;
    sov_status (*share_key)(void *ctx, void *bytes, size_t n);
    void *share_ctx;
    /* Signing: every rank sets sign (each hashes its data file as it writes it: nothing is read back), and rank 0
     * gives its signer; rank 0's commit then writes model.sig beside the manifest, before the checkpoint appears. */
    int sign;
    const sov_ckpt_signer *signer;
} sov_ckpt_options;

/* ---- writing ---- */
typedef struct sov_ckpt_writer sov_ckpt_writer;

SOV_API sov_status sov_ckpt_writer_open(sov_ckpt_writer **out, const char *dir, int rank, int world_size,
                                        const sov_ckpt_options *options);
/* Allocates the snapshot's staging memory for saves of `state`'s shape now, so that the first save does not pay
 * for it (pinned memory for a GPU job is slow to allocate). Optional; not while a save is running. */
SOV_API sov_status sov_ckpt_writer_reserve(sov_ckpt_writer *w, const sov_ckpt_state *state);
/* Waits for the previous save (its wait in *waited_s), snapshots this rank's share (its time in *stall_s) and
 * starts writing. When the previous save failed, returns its error and starts nothing (call sov_ckpt_wait first
 * to handle that failure separately). `save_id` must be the same on every rank for one save and differ between
 * saves (it keeps a crashed attempt's leftovers out of a new checkpoint). */
SOV_API sov_status sov_ckpt_save(sov_ckpt_writer *w, const sov_ckpt_state *state, uint64_t save_id,
                                 double *stall_s, double *waited_s);
/* Waits for the save in flight (on rank 0 until it is committed). Returns its status; on success and when
 * `path` is given, where it went. */
SOV_API sov_status sov_ckpt_wait(sov_ckpt_writer *w, char *path, size_t cap);
/* After sov_ckpt_wait returned SOV_OK: the seconds the save took from the sov_ckpt_save call (its wait for the
 * save before excluded) until this rank's part was durable and, on rank 0, the checkpoint committed and DIR/latest
 * naming it. Removing checkpoints beyond `keep` comes after that and is not counted. Meaningless after a failed
 * save. */
SOV_API double sov_ckpt_save_seconds(const sov_ckpt_writer *w);
SOV_API void sov_ckpt_writer_close(sov_ckpt_writer *w); /* waits, then frees */

/* Metadata known only once every rank has written (torch's Distributed Checkpoint learns its metadata then).
 * sov_ckpt_defer_meta, before sov_ckpt_save: that save's commit on rank 0 waits (up to commit_timeout_s) for
 * sov_ckpt_commit_meta, whose JSON object the manifest keeps instead of the state's meta_json. Nothing is visible
 * before: a save whose metadata never comes leaves the previous checkpoint the latest. Other ranks may call both;
 * only rank 0's metadata counts. Closing the writer first fails the save. */
SOV_API sov_status sov_ckpt_defer_meta(sov_ckpt_writer *w);
SOV_API sov_status sov_ckpt_commit_meta(sov_ckpt_writer *w, const char *meta_json);

/* ---- reading ---- */
typedef struct sov_ckpt sov_ckpt;

/* Opens the checkpoint directory `path` (DIR/step-N): reads and verifies the manifest. Checkpoints of every
 * format version from SOV_CKPT_FORMAT_VERSION_OLDEST on open; those before 4 show their buffers as tensors. */
SOV_API sov_status sov_ckpt_open(const char *path, sov_ckpt **out);
/* The same with the key of an encrypted checkpoint: its data key is unwrapped, and the manifest authenticated
 * (HMAC), before it returns. Without the key an encrypted checkpoint still opens: its tensors' names and shapes
 * can be listed and sov_ckpt_verify checks its stored bytes, but reading fails, naming the key id. */
SOV_API sov_status sov_ckpt_open_key(const char *path, const sov_ckpt_key *key, sov_ckpt **out);
/* The id of the key that encrypted the checkpoint, or NULL for a plain one. */
SOV_API const char *sov_ckpt_key_id(const sov_ckpt *c);
/* An encrypted checkpoint opened with its key: its data key, to share with other processes (see
 * sov_ckpt_key_from_data_key). SOV_ERR_INVALID when it was opened without one or is not encrypted. */
SOV_API sov_status sov_ckpt_data_key(const sov_ckpt *c, uint8_t out[32]);
SOV_API void sov_ckpt_close(sov_ckpt *c);
SOV_API long sov_ckpt_step(const sov_ckpt *c);
SOV_API const char *sov_ckpt_path(const sov_ckpt *c);
/* The number of ranks that wrote it. */
SOV_API int sov_ckpt_world_size(const sov_ckpt *c);
/* The state's metadata as JSON text ("null" when it has none); valid until sov_ckpt_close. */
SOV_API const char *sov_ckpt_meta_json(const sov_ckpt *c);

/* What a checkpoint says of one of its tensors. */
typedef struct sov_ckpt_tensor_info {
    const char *name; /* valid until sov_ckpt_close */
    sov_dtype dtype;
    int ndim;
    int64_t shape[SOV_CKPT_MAX_DIMS];
    int num_shards;   /* 1 for a replicated tensor */
} sov_ckpt_tensor_info;

SOV_API int sov_ckpt_num_tensors(const sov_ckpt *c);
/* Tensor `index` (0 .. sov_ckpt_num_tensors - 1), in the order of the manifest. */
SOV_API sov_status sov_ckpt_tensor_at(const sov_ckpt *c, int index, sov_ckpt_tensor_info *info);
/* Tensor `name`; SOV_ERR_INVALID naming it when the checkpoint has none of that name. */
SOV_API sov_status sov_ckpt_tensor_find(const sov_ckpt *c, const char *name, sov_ckpt_tensor_info *info);

/* One read: the box [offset, offset + shape) of tensor `name` (both NULL: the whole tensor) into dst, row-major,
 * as elements of `dtype`, which must be the tensor's. dst must hold the box's elements: find a tensor's shape with
 * sov_ckpt_tensor_find before reading it whole. */
typedef struct sov_ckpt_read_request {
    const char *name;
    sov_dtype dtype;
    const int64_t *offset, *shape;
    void *dst;
} sov_ckpt_read_request;

/* Reads every request in one pass: their chunks are read in file order by one set of threads (a chunk that
 * several requests need is read once), so a restore of a model and its optimizer state pays for one start-up and
 * keeps every thread busy. Every chunk read is verified. */
SOV_API sov_status sov_ckpt_read_many(sov_ckpt *c, const sov_ckpt_read_request *requests, int num_requests);
/* One whole tensor into dst. */
SOV_API sov_status sov_ckpt_read(sov_ckpt *c, const char *name, sov_dtype dtype, void *dst);
/* One box of a tensor into dst. */
SOV_API sov_status sov_ckpt_read_slice(sov_ckpt *c, const char *name, sov_dtype dtype, const int64_t *offset,
                                       const int64_t *shape, void *dst);
/* Reads and checks every chunk of every file. Stops at the first damage, naming file and chunk. An encrypted
 * checkpoint opened without its key: the stored bytes (every chunk's clear header and ciphertext checksum). */
SOV_API sov_status sov_ckpt_verify(sov_ckpt *c);

/* Rotates the operator's key of encrypted checkpoint `path` (DIR/step-N): its data key, unwrapped with old_key, is
 * wrapped with new_key and the manifest rewritten atomically, after every chunk verified; the data files are left
 * as they are. A signed checkpoint is refused (its signature covers the manifest). */
SOV_API sov_status sov_ckpt_rekey(const char *path, const sov_ckpt_key *old_key, const sov_ckpt_key *new_key);

/* Reports why a candidate was skipped while searching (may be NULL). */
typedef void (*sov_ckpt_note_fn)(void *ctx, const char *message);
/* The newest checkpoint under `dir` that opens and verifies: DIR/latest first, then every DIR/step-N from the
 * newest down. SOV_ERR_IO with "no checkpoint" when there is none at all. */
SOV_API sov_status sov_ckpt_find(const char *dir, char *path, size_t cap, sov_ckpt_note_fn note, void *ctx);

/* Steps of the complete checkpoints under dir (step-N directories, newest first). Returns the count (<= cap). */
SOV_API int sov_ckpt_list_steps(const char *dir, long *steps, int cap);

/* Writes every tensor of the checkpoint, whole and in its own dtype, to a safetensors file: the open exit path.
 * The file is written as FILE.tmp, fsynced and renamed. */
SOV_API sov_status sov_ckpt_export_safetensors(sov_ckpt *c, const char *out_path);

/* Reads tensor `name` of a safetensors file into dst; the file must hold it with this dtype and shape. The way in:
 * a model seeded from an exported checkpoint or from another framework. */
SOV_API sov_status sov_safetensors_read(const char *path, const char *name, sov_dtype dtype, int ndim,
                                        const int64_t *shape, void *dst);

/* `sovtrain ckpt ARGS...` (argv[0] is "ckpt"). Returns the process exit code. */
SOV_API int sov_ckpt_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
