/* optim.h (internal): optimizers over the flat parameter buffer, and the learning-rate schedule. */
#ifndef SOV_OPTIM_H
#define SOV_OPTIM_H

#include "device.h"
#include <sovtrain/runtime.h>

typedef enum sov_optim_kind { SOV_OPTIM_SGD, SOV_OPTIM_ADAMW } sov_optim_kind;

typedef struct sov_optim_config {
    sov_optim_kind kind;
    float lr;           /* peak learning rate */
    float momentum;     /* SGD */
    float beta1, beta2; /* AdamW */
    float eps;          /* AdamW */
    float weight_decay; /* applied to tensors with decay=1 (SGD: L2 in the gradient; AdamW: decoupled) */
    float clip_norm;    /* clip the global gradient norm to this; 0 disables */
    long warmup_steps;  /* linear warmup from lr/warmup to lr */
    long total_steps;   /* cosine decay reaches lr*min_lr_ratio here */
    float min_lr_ratio;
} sov_optim_config;

typedef struct sov_optimizer {
    sov_optim_config cfg;
    size_t count; /* parameters */
    float *m;     /* SGD momentum buffer / AdamW first moment */
    float *v;     /* AdamW second moment (NULL for SGD) */
    long t;       /* steps taken */
    sov_device *device; /* NULL: m, v and the model's buffers are host memory; else that GPU's */
    double *norm_scratch; /* GPU: per-block partial sums of the gradient norm, then the total */
    double *norm_host;    /* GPU: pinned landing place of the total */
} sov_optimizer;

/* State for `count` parameters, in host memory or, with `device`, on that GPU (updates run there as kernels). */
sov_status sov_optim_init(sov_optimizer *opt, const sov_optim_config *cfg, size_t count, sov_device *device);
void sov_optim_free(sov_optimizer *opt);

/* Learning rate at 0-based step `step`: linear warmup, then cosine decay. */
float sov_lr_at(const sov_optim_config *cfg, long step);

/* L2 norm of the whole gradient (host memory). */
double sov_grad_norm(const float *grads, size_t count);

/* One update of every tensor of `m` with learning rate `lr` (gradients already averaged across ranks).
 * Clips the global gradient norm first when configured; *norm receives the norm before clipping. Fails only on
 * a GPU error. */
sov_status sov_optim_step(sov_optimizer *opt, sov_model *m, float lr, double *norm);

#endif
