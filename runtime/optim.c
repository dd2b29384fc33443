/* optim.c: SGD with momentum and AdamW (PyTorch's update rules), warmup + cosine schedule. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>

sov_status sov_optim_init(sov_optimizer *opt, const sov_optim_config *cfg, size_t count) {
    *opt = (sov_optimizer){.cfg = *cfg, .count = count};
    opt->m = sov_aligned_alloc(count * sizeof(float));
    if (!opt->m)
        return SOV_ERR_NOMEM;
    if (cfg->kind == SOV_OPTIM_ADAMW && !(opt->v = sov_aligned_alloc(count * sizeof(float)))) {
        sov_optim_free(opt);
        return SOV_ERR_NOMEM;
    }
    return SOV_OK;
}

void sov_optim_free(sov_optimizer *opt) {
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
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
    const float bc1 = 1.0f - powf(b1, (float)opt->t), bc2 = 1.0f - powf(b2, (float)opt->t);
    const float step = lr / bc1, inv_sqrt_bc2 = 1.0f / sqrtf(bc2), decay = 1.0f - lr * wd;
    for (size_t i = 0; i < n; i++) {
        float grad = g[i] * scale;
        m[i] = b1 * m[i] + (1.0f - b1) * grad;
        v[i] = b2 * v[i] + (1.0f - b2) * grad * grad;
        p[i] = p[i] * decay - step * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
    }
}

double sov_optim_step(sov_optimizer *opt, sov_model *model, float lr) {
    double norm = sov_grad_norm(model->grads, model->num_params);
    float scale = 1.0f;
    if (opt->cfg.clip_norm > 0.0f && norm > opt->cfg.clip_norm)
        scale = (float)(opt->cfg.clip_norm / (norm + 1e-6));
    opt->t++;
    for (int t = 0; t < model->num_tensors; t++) {
        const sov_tensor *ten = &model->tensors[t];
        float wd = ten->decay ? opt->cfg.weight_decay : 0.0f;
        float *p = model->params + ten->offset, *m = opt->m + ten->offset;
        const float *g = model->grads + ten->offset;
        if (opt->cfg.kind == SOV_OPTIM_SGD)
            sgd_range(opt, p, g, m, ten->count, lr, wd, scale);
        else
            adamw_range(opt, p, g, m, opt->v + ten->offset, ten->count, lr, wd, scale);
    }
    return norm;
}
