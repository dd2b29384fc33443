/* optim.c: SGD with momentum and AdamW (PyTorch's update rules), warmup + cosine schedule. */
#include "optim.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>

static float *state_alloc(sov_optimizer *opt) {
    size_t bytes = opt->count * sizeof(float);
    return opt->device ? sov_device_alloc(opt->device, bytes) : sov_aligned_alloc(bytes);
}

sov_status sov_optim_init(sov_optimizer *opt, const sov_optim_config *cfg, size_t count, sov_device *device) {
    *opt = (sov_optimizer){.cfg = *cfg, .count = count, .device = device};
    int ok = (opt->m = state_alloc(opt)) != NULL;
    if (ok && cfg->kind == SOV_OPTIM_ADAMW)
        ok = (opt->v = state_alloc(opt)) != NULL;
    if (ok && device) {
        opt->norm_scratch = sov_device_alloc(device, (SOV_K_SUMSQ_BLOCKS + 1) * sizeof(double));
        opt->norm_host = sov_device_alloc_host(device, sizeof(double));
        ok = opt->norm_scratch && opt->norm_host;
    }
    if (!ok) {
        sov_optim_free(opt);
        return SOV_ERR_NOMEM;
    }
    return SOV_OK;
}

void sov_optim_free(sov_optimizer *opt) {
    if (opt->device) {
        sov_device_free(opt->device, opt->m);
        sov_device_free(opt->device, opt->v);
        sov_device_free(opt->device, opt->norm_scratch);
        sov_device_free_host(opt->device, opt->norm_host);
    } else {
        free(opt->m);
        free(opt->v);
    }
    opt->m = opt->v = NULL;
    opt->norm_scratch = opt->norm_host = NULL;
}

float sov_lr_at(const sov_optim_config *c, long step) {
    if (step < c->warmup_steps)
        return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    long span = c->total_steps - c->warmup_steps;
    double progress = span > 0 ? (double)(step - c->warmup_steps) / (double)span : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    double lo = (double)c->lr * c->min_lr_ratio;
    return (float)(lo + ((double)c->lr - lo) * 0.5 * (1.0 + cos(M_PI * progress)));
}

double sov_grad_norm(const float *g, size_t count) {
    double sum = 0.0;
    for (size_t i = 0; i < count; i++)
        sum += (double)g[i] * g[i];
    return sqrt(sum);
}

/* AdamW's per-step constants, shared by the CPU loop and the GPU kernel so both compute the same bits. */
typedef struct adamw_consts {
    float step, inv_sqrt_bc2, decay;
} adamw_consts;

static adamw_consts adamw_at(const sov_optimizer *opt, float lr, float wd) {
    const float bc1 = 1.0f - powf(opt->cfg.beta1, (float)opt->t), bc2 = 1.0f - powf(opt->cfg.beta2, (float)opt->t);
    return (adamw_consts){.step = lr / bc1, .inv_sqrt_bc2 = 1.0f / sqrtf(bc2), .decay = 1.0f - lr * wd};
}

static void sgd_range(sov_optimizer *opt, float *p, const float *g, float *buf, size_t n, float lr, float wd,
                      float scale) {
    const float mu = opt->cfg.momentum;
    for (size_t i = 0; i < n; i++) {
        float grad = g[i] * scale + wd * p[i];
        buf[i] = mu * buf[i] + grad;
        p[i] -= lr * buf[i];
    }
}

static void adamw_range(sov_optimizer *opt, float *p, const float *g, float *m, float *v, size_t n, float lr,
                        float wd, float scale) {
    const float b1 = opt->cfg.beta1, b2 = opt->cfg.beta2, eps = opt->cfg.eps;
    const adamw_consts k = adamw_at(opt, lr, wd);
    for (size_t i = 0; i < n; i++) {
        float grad = g[i] * scale;
        m[i] = b1 * m[i] + (1.0f - b1) * grad;
        v[i] = b2 * v[i] + (1.0f - b2) * grad * grad;
        p[i] = p[i] * k.decay - k.step * m[i] / (sqrtf(v[i]) * k.inv_sqrt_bc2 + eps);
    }
}

#ifdef SOVTRAIN_HAVE_CUDA
/* The gradient norm on the GPU: fixed-order partial sums, then their sum, copied back. */
static sov_status device_grad_norm(sov_optimizer *opt, const float *grads, size_t count, double *norm) {
    void *stream = sov_device_stream(opt->device);
    sov_k_sumsq(grads, count, opt->norm_scratch, stream);
    sov_k_sum_partials(opt->norm_scratch, SOV_K_SUMSQ_BLOCKS, opt->norm_scratch + SOV_K_SUMSQ_BLOCKS, stream);
    SOV_CHECK(sov_device_check_launch(opt->device, "gradient norm"));
    SOV_CHECK(sov_device_to_host(opt->device, opt->norm_host, opt->norm_scratch + SOV_K_SUMSQ_BLOCKS, sizeof(double)));
    *norm = sqrt(*opt->norm_host);
    return SOV_OK;
}

static void device_update(sov_optimizer *opt, float *p, const float *g, size_t off, size_t n, float lr, float wd,
                          float scale) {
    void *stream = sov_device_stream(opt->device);
    if (opt->cfg.kind == SOV_OPTIM_SGD) {
        sov_k_sgd(p, g, opt->m + off, n, opt->cfg.momentum, lr, wd, scale, stream);
        return;
    }
    adamw_consts k = adamw_at(opt, lr, wd);
    sov_k_adamw(p, g, opt->m + off, opt->v + off, n, opt->cfg.beta1, opt->cfg.beta2, opt->cfg.eps, k.step,
                k.inv_sqrt_bc2, k.decay, scale, stream);
}
#else
static sov_status device_grad_norm(sov_optimizer *opt, const float *grads, size_t count, double *norm) {
    (void)opt, (void)grads, (void)count, (void)norm;
    return sov_fail(SOV_ERR_UNSUPPORTED, "optimizer: a GPU optimizer in a build without CUDA");
}
static void device_update(sov_optimizer *opt, float *p, const float *g, size_t off, size_t n, float lr, float wd,
                          float scale) {
    (void)opt, (void)p, (void)g, (void)off, (void)n, (void)lr, (void)wd, (void)scale;
}
#endif

sov_status sov_optim_step(sov_optimizer *opt, sov_model *model, float lr, double *norm) {
    if (opt->device)
        SOV_CHECK(device_grad_norm(opt, model->grads, model->num_params, norm));
    else
        *norm = sov_grad_norm(model->grads, model->num_params);
    float scale = 1.0f;
    if (opt->cfg.clip_norm > 0.0f && *norm > opt->cfg.clip_norm)
        scale = (float)(opt->cfg.clip_norm / (*norm + 1e-6));
    opt->t++;
    for (int t = 0; t < model->num_tensors; t++) {
        const sov_tensor *ten = &model->tensors[t];
        float wd = ten->decay ? opt->cfg.weight_decay : 0.0f;
        float *p = model->params + ten->offset;
        const float *g = model->grads + ten->offset;
        if (opt->device)
            device_update(opt, p, g, ten->offset, ten->count, lr, wd, scale);
        else if (opt->cfg.kind == SOV_OPTIM_SGD)
            sgd_range(opt, p, g, opt->m + ten->offset, ten->count, lr, wd, scale);
        else
            adamw_range(opt, p, g, opt->m + ten->offset, opt->v + ten->offset, ten->count, lr, wd, scale);
    }
    return opt->device ? sov_device_check_launch(opt->device, "optimizer update") : SOV_OK;
}
