/* mlp.c: a multi-layer perceptron (Linear -> ReLU -> ... -> Linear) with softmax cross-entropy, on OpenBLAS.
 *
 * Layer l has weight W_l [out, in] (PyTorch's nn.Linear layout) and bias b_l [out], stored back to back in the
 * flat buffer, so each layer's gradients form one contiguous range that backward hands to the gradient hook. */
#include "mlp.h"
#include "rng.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mlp {
    int layers;                   /* Linear layers */
    int dims[MLP_MAX_LAYERS + 1]; /* dims[0] input, dims[layers] classes */
    int max_batch;
    float *acts[MLP_MAX_LAYERS + 1]; /* acts[0] = input (borrowed); acts[l] = output of layer l (post-ReLU) */
    float *delta[2];                 /* ping-pong gradients w.r.t. layer outputs */
} mlp;

const sov_model_setting sov_mlp_settings[SOV_MLP_NUM_SETTINGS] = {
    [SOV_MLP_HIDDEN] = {"hidden", "W1,W2,...", "1024,1024", "hidden layer widths"},
};

sov_status sov_mlp_dims(const sov_model_config *cfg, int *dims, int *layers) {
    if (cfg->input_dim < 1 || cfg->classes < 2 || cfg->max_batch < 1)
        return sov_fail(SOV_ERR_INVALID, "mlp: bad shape (input %d, classes %d, batch %d)", cfg->input_dim,
                        cfg->classes, cfg->max_batch);
    const char *spec = cfg->values[SOV_MLP_HIDDEN];
    dims[0] = cfg->input_dim;
    *layers = 0;
    for (const char *p = spec; *p;) {
        char *end;
        errno = 0;
        long w = strtol(p, &end, 10);
        if (end == p || errno || w < 1 || w > 65536 || (*end && *end != ','))
            return sov_fail(SOV_ERR_INVALID, "--hidden \"%s\": expected comma-separated widths in 1..65536", spec);
        if (*layers + 1 >= MLP_MAX_LAYERS)
            return sov_fail(SOV_ERR_INVALID, "--hidden \"%s\": at most %d hidden layers", spec, MLP_MAX_LAYERS - 1);
        dims[++*layers] = (int)w;
        p = *end ? end + 1 : end;
    }
    dims[++*layers] = cfg->classes;
    return SOV_OK;
}

sov_status sov_mlp_describe(sov_model *m, const int *dims, int layers) {
    m->num_tensors = 2 * layers;
    m->tensors = sov_calloc((size_t)m->num_tensors, sizeof *m->tensors);
    if (!m->tensors)
        return SOV_ERR_NOMEM;
    size_t off = 0;
    for (int l = 0; l < layers; l++) {
        sov_tensor *w = &m->tensors[2 * l], *b = &m->tensors[2 * l + 1];
        *w = (sov_tensor){.offset = off, .count = (size_t)dims[l + 1] * (size_t)dims[l], .ndim = 2,
                          .shape = {dims[l + 1], dims[l]}, .decay = 1};
        snprintf(w->name, sizeof w->name, "layers.%d.weight", l);
        off += w->count;
        *b = (sov_tensor){.offset = off, .count = (size_t)dims[l + 1], .ndim = 1, .shape = {dims[l + 1]}, .decay = 0};
        snprintf(b->name, sizeof b->name, "layers.%d.bias", l);
        off += b->count;
    }
    m->num_params = off;
    m->predictions_per_sample = 1;
    return SOV_OK;
}

static void mlp_destroy(sov_model *m) {
    mlp *net = m->impl;
    for (int l = 1; l <= net->layers; l++)
        free(net->acts[l]);
    free(net->delta[0]);
    free(net->delta[1]);
    free(net);
    m->impl = NULL;
}

static sov_status mlp_create(const sov_model_config *cfg, sov_model *m) {
    mlp *net = sov_calloc(1, sizeof *net);
    if (!net)
        return SOV_ERR_NOMEM;
    m->impl = net;
    net->max_batch = cfg->max_batch;
    SOV_CHECK(sov_mlp_dims(cfg, net->dims, &net->layers));
    SOV_CHECK(sov_mlp_describe(m, net->dims, net->layers));
    int widest = 0;
    for (int l = 0; l <= net->layers; l++)
        widest = net->dims[l] > widest ? net->dims[l] : widest;
    for (int l = 1; l <= net->layers; l++)
        if (!(net->acts[l] = sov_aligned_alloc((size_t)cfg->max_batch * (size_t)net->dims[l] * sizeof(float))))
            return SOV_ERR_NOMEM;
    for (int i = 0; i < 2; i++)
        if (!(net->delta[i] = sov_aligned_alloc((size_t)cfg->max_batch * (size_t)widest * sizeof(float))))
            return SOV_ERR_NOMEM;
    return SOV_OK;
}

/* PyTorch's nn.Linear default: weights and biases uniform in +-1/sqrt(fan_in). */
void sov_mlp_init_params(sov_model *m, uint64_t seed) {
    for (int t = 0; t < m->num_tensors; t++) {
        const sov_tensor *ten = &m->tensors[t];
        int fan_in = (int)m->tensors[t & ~1].shape[1];
        float bound = 1.0f / sqrtf((float)fan_in);
        sov_rng rng;
        sov_rng_seed(&rng, seed, (uint64_t)t);
        for (size_t i = 0; i < ten->count; i++)
            m->params[ten->offset + i] = (2.0f * sov_rng_uniform(&rng) - 1.0f) * bound;
    }
}

static void forward(sov_model *m, const float *x, int n) {
    mlp *net = m->impl;
    net->acts[0] = (float *)x;
    for (int l = 0; l < net->layers; l++) {
        int in = net->dims[l], out = net->dims[l + 1];
        const float *w = m->params + m->tensors[2 * l].offset, *b = m->params + m->tensors[2 * l + 1].offset;
        float *z = net->acts[l + 1];
        for (int i = 0; i < n; i++)
            memcpy(z + (size_t)i * out, b, (size_t)out * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, net->acts[l], in, w, in, 1.0f, z, out);
        if (l + 1 < net->layers)
            for (size_t i = 0; i < (size_t)n * out; i++)
                z[i] = z[i] > 0.0f ? z[i] : 0.0f;
    }
}

/* Softmax cross-entropy of one row of logits; writes the softmax into `prob` when non-NULL. */
static float row_loss(const float *logits, int classes, int label, float *prob) {
    float mx = logits[0];
    for (int c = 1; c < classes; c++)
        mx = logits[c] > mx ? logits[c] : mx;
    float sum = 0.0f;
    for (int c = 0; c < classes; c++)
        sum += expf(logits[c] - mx);
    if (prob)
        for (int c = 0; c < classes; c++)
            prob[c] = expf(logits[c] - mx) / sum;
    return logf(sum) - (logits[label] - mx);
}

sov_status sov_mlp_check_batch(const sov_batch *b, int max_batch, int classes) {
    if (b->n < 1 || b->n > max_batch)
        return sov_fail(SOV_ERR_INVALID, "mlp: batch of %d samples outside 1..%d", b->n, max_batch);
    for (int i = 0; i < b->n; i++)
        if (b->y[i] < 0 || b->y[i] >= classes)
            return sov_fail(SOV_ERR_INVALID, "mlp: label %d of sample %d outside 0..%d", b->y[i], i, classes - 1);
    return SOV_OK;
}

static void backward_layer(sov_model *m, int l, const float *delta, int n) {
    mlp *net = m->impl;
    int in = net->dims[l], out = net->dims[l + 1];
    float *gw = m->grads + m->tensors[2 * l].offset, *gb = m->grads + m->tensors[2 * l + 1].offset;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, delta, out, net->acts[l], in, 0.0f, gw,
                in);
    memset(gb, 0, (size_t)out * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < out; j++)
            gb[j] += delta[(size_t)i * out + j];
}

static sov_status mlp_train_step(sov_model *m, const sov_batch *b, float *loss, const sov_grad_hook *hook) {
    mlp *net = m->impl;
    SOV_CHECK(sov_mlp_check_batch(b, net->max_batch, net->dims[net->layers]));
    int n = b->n, classes = net->dims[net->layers];
    forward(m, b->x, n);
    float *delta = net->delta[0];
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        float *d = delta + (size_t)i * classes;
        total += row_loss(net->acts[net->layers] + (size_t)i * classes, classes, b->y[i], d);
        d[b->y[i]] -= 1.0f;
        for (int c = 0; c < classes; c++)
            d[c] /= (float)n;
    }
    *loss = (float)(total / n);
    for (int l = net->layers - 1; l >= 0; l--) {
        backward_layer(m, l, delta, n);
        if (hook && hook->ready)
            hook->ready(hook->ctx, m->tensors[2 * l].offset, m->tensors[2 * l].count + m->tensors[2 * l + 1].count);
        if (l == 0)
            break;
        int in = net->dims[l], out = net->dims[l + 1];
        const float *w = m->params + m->tensors[2 * l].offset;
        float *prev = net->delta[(net->layers - l) & 1];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, delta, out, w, in, 0.0f, prev, in);
        const float *a = net->acts[l];
        for (size_t i = 0; i < (size_t)n * in; i++)
            prev[i] = a[i] > 0.0f ? prev[i] : 0.0f;
        delta = prev;
    }
    return SOV_OK;
}

static sov_status mlp_eval(sov_model *m, const sov_batch *b, double *loss_sum, long *correct) {
    mlp *net = m->impl;
    SOV_CHECK(sov_mlp_check_batch(b, net->max_batch, net->dims[net->layers]));
    int classes = net->dims[net->layers];
    forward(m, b->x, b->n);
    for (int i = 0; i < b->n; i++) {
        const float *logits = net->acts[net->layers] + (size_t)i * classes;
        *loss_sum += row_loss(logits, classes, b->y[i], NULL);
        int best = 0;
        for (int c = 1; c < classes; c++)
            best = logits[c] > logits[best] ? c : best;
        *correct += best == b->y[i];
    }
    return SOV_OK;
}

const sov_model_ops sov_mlp_ops = {
    .name = "mlp",
    .kind = SOV_MODEL_CLASSIFIER,
    .settings = sov_mlp_settings,
    .num_settings = SOV_MLP_NUM_SETTINGS,
    .create = mlp_create,
    .init = sov_mlp_init_params,
    .train_step = mlp_train_step,
    .eval = mlp_eval,
    .destroy = mlp_destroy,
};
