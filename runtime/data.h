/* data.h (internal): datasets and the global sample order: Fashion-MNIST for classifiers, text for language
 * models.
 *
 * Fashion-MNIST comes as IDX files (optionally gzip'd). Pixels stay as bytes in memory and are normalised only
 * when a batch is gathered. The sampler draws one seeded permutation of the training set per epoch; every rank
 * computes the same permutation and takes its own contiguous part of each global batch. */
#ifndef SOV_DATA_H
#define SOV_DATA_H

#include "sov_internal.h"

typedef struct sov_dataset {
    int count;       /* samples */
    int dim;         /* features per sample (rows x cols) */
    int classes;     /* label values are < classes */
    uint8_t *pixels; /* count x dim */
    uint8_t *labels; /* count */
} sov_dataset;

/* Default location of Debian's dataset-fashion-mnist package. */
#define SOV_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* Reads an IDX file of unsigned bytes with `ndim` dimensions (gzip'd or plain). On success *data holds the
 * product of dims bytes and dims[0..ndim) the sizes. Errors name the file and what is wrong with it. */
sov_status sov_idx_read(const char *path, int ndim, uint8_t **data, uint32_t *dims);

/* Loads split "train" or "t10k" from `dir` (files <split>-images-idx3-ubyte[.gz], <split>-labels-idx1-ubyte[.gz]). */
sov_status sov_mnist_load(const char *dir, const char *split, sov_dataset *ds);
void sov_dataset_free(sov_dataset *ds);

/* Gathers samples `indices[0..n)` into x (n x dim floats, normalised) and y (n labels). */
void sov_dataset_gather(const sov_dataset *ds, const int32_t *indices, int n, float *x, int32_t *y);

typedef struct sov_sampler {
    int count;     /* samples in the dataset */
    uint64_t seed;
    long epoch;    /* epoch whose permutation `order` holds, -1 when none */
    int32_t *order;
} sov_sampler;

sov_status sov_sampler_init(sov_sampler *s, int count, uint64_t seed);
void sov_sampler_free(sov_sampler *s);
/* The sample order of `epoch`: a permutation of [0, count) that depends only on (seed, epoch). */
const int32_t *sov_sampler_epoch(sov_sampler *s, long epoch);
/* The `local_batch` indices this rank uses at `step`, for global batches of `global_batch` samples. */
const int32_t *sov_sampler_batch(sov_sampler *s, long step, int global_batch, int rank, int local_batch);

/* ---- text, for language models ----
 * The bytes of a file, or of a directory's *.u8 files (fortune's texts; else all its regular files) in name
 * order, concatenated; the first 95 % train, the rest validate. Tokens are bytes. Training window starts are a
 * pure function of (seed, global sample index), so any world size sees the same global batch and a resumed job
 * the same windows. */
typedef struct sov_text {
    uint8_t *bytes;
    size_t len;
    size_t train_len; /* [0, train_len) trains, [train_len, len) validates */
} sov_text;

/* Tokens are bytes: a language model trained on text has this vocabulary. */
#define SOV_TEXT_VOCAB 256

/* Default corpus: Debian's fortunes package. */
#define SOV_FORTUNES_DIR "/usr/share/games/fortunes"

sov_status sov_text_load(const char *path, sov_text *t);
void sov_text_free(sov_text *t);
/* Refuses a context that leaves no full window (context + 1 bytes) in either split. */
sov_status sov_text_check_context(const sov_text *t, int context);
/* The local_batch windows of this rank at `step` (samples [rank*local_batch, ...) of the global batch): inputs
 * into tokens and next bytes into targets, local_batch x context each. */
void sov_text_train_batch(const sov_text *t, uint64_t seed, long step, int global_batch, int rank, int local_batch,
                          int context, int32_t *tokens, int32_t *targets);
/* Validation: windows i = 0..n-1 start at byte i*context of the validation split. */
int sov_text_val_windows(const sov_text *t, int context);
void sov_text_val_batch(const sov_text *t, int first, int n, int context, int32_t *tokens, int32_t *targets);

#endif
