/* runtime.h: the data-parallel training runtime's public interface: the model plug-in contract and the
 * `sovtrain train` entry point.
 *
 * A model owns no parameter memory of its own: it describes its tensors as ranges of ONE flat parameter buffer
 * (and the same ranges of one flat gradient buffer), which the runtime allocates. Allreduce, optimizer and
 * checkpoint then work on ranges, never on per-tensor allocations. */
#ifndef SOV_RUNTIME_H
#define SOV_RUNTIME_H

#include <sovtrain/sov.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A GPU of this process (runtime-internal; created by the trainer). */
typedef struct sov_device sov_device;

typedef struct sov_tensor {
    char name[64];    /* e.g. "layers.0.weight" (PyTorch naming, used by safetensors export) */
    size_t offset;    /* in elements, into the flat buffers */
    size_t count;     /* elements */
    int ndim;
    int64_t shape[4]; /* row-major */
    int decay;        /* 1 when weight decay applies (matrices), 0 for biases and norms */
} sov_tensor;

/* One rank's part of a global batch. A classifier reads x and one label per sample; a language model reads
 * `tokens` and one target per position (y[i*context + t] is the token that follows tokens[i*context + t]). */
typedef struct sov_batch {
    int n;                 /* samples (sequences, for a language model) */
    const float *x;        /* classifier: n x input_dim features; NULL otherwise */
    const int32_t *tokens; /* language model: n x context input tokens; NULL otherwise */
    const int32_t *y;      /* classifier: n labels; language model: n x context targets */
} sov_batch;

/* Backward calls ready(ctx, offset, count) as soon as gradients [offset, offset+count) are final, in reverse
 * layer order, so the runtime can start reducing them while the rest of backward still runs. */
typedef struct sov_grad_hook {
    void (*ready)(void *ctx, size_t offset, size_t count);
    void *ctx;
} sov_grad_hook;

/* What a model computes, which decides the data the trainer feeds it and whether `sovtrain sample` can use it. */
typedef enum sov_model_kind {
    SOV_MODEL_CLASSIFIER, /* one label per sample: batches of x and y (Fashion-MNIST) */
    SOV_MODEL_LANGUAGE,   /* the next token at every position: batches of tokens and y (text); its context (tokens
                           * per sequence) is m->predictions_per_sample, and it has next_logits */
} sov_model_kind;

/* One of a model's own settings: `sovtrain train --NAME VALUE`, recorded by name in a checkpoint's meta.config,
 * from which `sovtrain sample` rebuilds the model. */
typedef struct sov_model_setting {
    const char *name;          /* the flag without "--", e.g. "hidden"; never one of `sovtrain train`'s own flags */
    const char *value_name;    /* the value in --help, e.g. "W1,W2,..." */
    const char *default_value; /* as it would be written on the command line */
    const char *help;          /* one line for --help */
} sov_model_setting;

/* What the runtime gives every model, and the model's own settings as text. */
typedef struct sov_model_config {
    int input_dim;      /* features per sample (a classifier) */
    int classes;        /* output classes; a language model's vocabulary size */
    int max_batch;      /* largest batch passed to train_step or eval */
    sov_device *device; /* NULL: compute on the CPU; else the GPU whose memory params and grads live in */
    int bf16;           /* GPU only: matrix products on bf16 copies of weights and activations, accumulated in
                         * f32; parameters (the master copy), gradients and optimizer state stay f32 */
    /* values[i] is the value of ops->settings[i]; a NULL array or entry means the setting's default. create parses
     * and checks them itself, its errors naming the flag (--NAME); sov_model_create hands it every entry filled
     * in, valid during create only. */
    const char *const *values;
} sov_model_config;

typedef struct sov_model sov_model;

/* Where the flat buffers come from: the communicator's memory (shared or device memory that collectives use
 * without copies) or, with a NULL allocator, plain host memory. */
typedef struct sov_allocator {
    void *(*alloc)(void *ctx, size_t bytes); /* zeroed, 64-byte aligned */
    void (*free)(void *ctx, void *ptr);
    void *ctx;
} sov_allocator;

typedef struct sov_model_ops {
    const char *name;
    sov_model_kind kind;
    const sov_model_setting *settings; /* the model's own settings, in the order of sov_model_config.values */
    int num_settings;
    /* Describes the tensors (m->tensors, m->num_tensors, m->num_params) and allocates activations (m->impl). */
    sov_status (*create)(const sov_model_config *cfg, sov_model *m);
    /* Writes initial parameters, a pure function of the seed. */
    void (*init)(sov_model *m, uint64_t seed);
    /* Forward and backward: m->grads = d(mean loss over the batch)/d(params); *loss = that mean loss. */
    sov_status (*train_step)(sov_model *m, const sov_batch *batch, float *loss, const sov_grad_hook *hook);
    /* Forward only: adds the batch's summed loss and number of correct predictions (over
     * n * m->predictions_per_sample predictions). */
    sov_status (*eval)(sov_model *m, const sov_batch *batch, double *loss_sum, long *correct);
    void (*destroy)(sov_model *m);
    /* Language models only (NULL otherwise): the logits (`classes` values) of the token that would follow
     * tokens[0..len), 1 <= len <= context. For generation: `sovtrain sample`. */
    sov_status (*next_logits)(sov_model *m, const int32_t *tokens, int len, float *logits);
} sov_model_ops;

struct sov_model {
    const sov_model_ops *ops;
    size_t num_params;
    int predictions_per_sample; /* 1 for a classifier, context for a language model; create sets it */
    int num_tensors;
    sov_tensor *tensors;
    float *params; /* flat, num_params, owned by the runtime */
    float *grads;  /* flat, num_params, owned by the runtime */
    void *impl;    /* the model's own state (activations, shapes) */
    sov_allocator allocator; /* what params and grads came from */
};

/* Built-in models by name ("mlp", "gpt"); NULL when unknown. */
SOV_API const sov_model_ops *sov_model_find(const char *name);
/* The built-in models in turn: index 0, 1, ...; NULL past the last. */
SOV_API const sov_model_ops *sov_model_builtin(int index);
/* The CUDA implementation of a built-in model ("mlp"); NULL when it has none (or the build has no CUDA). */
SOV_API const sov_model_ops *sov_model_find_cuda(const char *name);
/* Creates a model and its flat parameter and gradient buffers (64-byte aligned, zeroed) from `allocator`
 * (NULL: host memory). With cfg->device set, the model's CUDA implementation is used, and `allocator` must give
 * that GPU's memory. */
SOV_API sov_status sov_model_create(const char *name, const sov_model_config *cfg, const sov_allocator *allocator,
                            sov_model **out);
SOV_API void sov_model_destroy(sov_model *m);

/* Number of CUDA GPUs this process can use. 0 when there are none, with the reason in `why` (no driver, no
 * device, or a build without CUDA). */
SOV_API int sov_gpu_count(char *why, size_t cap);

/* `sovtrain train ARGS...`: one rank of a data-parallel job. Returns the process exit code. */
SOV_API int sov_train_main(int argc, char **argv);
/* `sovtrain sample ARGS...`: text from a language model's checkpoint. Returns the process exit code. */
SOV_API int sov_sample_main(int argc, char **argv);
/* `sovtrain version`: the versions of sovtrain and the libraries it was built with, on stdout. */
SOV_API int sov_version_main(int argc, char **argv);

/* Call first in the main of a program that trains or samples on the CPU, with main's own argv. Debian's OpenBLAS
 * falls back to slow generic kernels on CPUs newer than its release; this re-executes the process
 * (/proc/self/exe, argv) with OPENBLAS_CORETYPE naming kernels the CPU runs, when OpenBLAS fell back and the
 * variable is unset. Returns when nothing needs changing or the re-execution failed (after a warning). */
SOV_API void sov_blas_choose_kernels(char **argv);

#ifdef __cplusplus
}
#endif

#endif
