/* mlp_cuda.c: the MLP on a GPU (CUDA builds only): cuBLAS for the products, kernels.cu for bias, ReLU and
 * softmax cross-entropy. Same tensors, same initial bits and the same gradient hook order as mlp.c, so the
 * runtime (buckets, optimizer, checkpoints) treats both alike; params, grads and activations live on the GPU.
 *
 * Row-major [rows, cols] matrices are column-major [cols, rows] to cuBLAS, so Z = X W^T (X [n, in], W [out, in])
 * is computed as Z^T = W X^T with W transposed: cublasSgemm(T, N, out, n, in, W, in, X, in, Z, out).
 *
 * With cfg->bf16 (--precision bf16) every product reads bf16 copies of its two operands (the weights, cast once
 * per step from the f32 master parameters; activations and output gradients, cast as they are produced) and
 * accumulates in f32 on the tensor cores (cublasGemmEx, CUBLAS_COMPUTE_32F). Everything else, the gradients and
 * the optimizer stay f32, so checkpoints are the same as an f32 job's. */
#include "kernels.h"
#include "mlp.h"

#include <cublas_v2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mlp_cuda {
    sov_device *dev;
    int layers;
    int dims[MLP_MAX_LAYERS + 1];
    int max_batch;
    int32_t *labels;                 /* max_batch */
    float *acts[MLP_MAX_LAYERS + 1]; /* acts[0] = the batch's inputs; acts[l] = layer l's output (post-ReLU) */
    float *delta[2];                 /* ping-pong gradients w.r.t. layer outputs */
    float *row_loss;                 /* max_batch, on the GPU */
    int32_t *row_correct;
    float *host_loss;                /* pinned copies of the two above */
    int32_t *host_correct;
    sov_status init_status;             /* a failed init, reported by the next step (init returns nothing) */
    char init_error[512];
    int bf16;                           /* products on bf16 operands */
    uint16_t *params16;                 /* bf16: the parameters, cast at the start of each forward */
    uint16_t *acts16[MLP_MAX_LAYERS + 1]; /* bf16: acts[l] cast (not the logits) */
    uint16_t *delta16;                  /* bf16: the output gradient of the layer in backward */
} mlp_cuda;

/* An operand of a product: its f32 data, and its bf16 copy in a bf16 model. */
typedef struct operand {
    const float *f32;
    const uint16_t *bf16;
} operand;

static const float one = 1.0f, zero = 0.0f;

static sov_status blas_check(const mlp_cuda *net, cublasStatus_t st, const char *what, int m, int n, int k) {
    if (st == CUBLAS_STATUS_SUCCESS)
        return SOV_OK;
    return sov_fail(SOV_ERR_IO, "cuBLAS on GPU %d: the %s (%d x %d x %d, %s) failed: %s", sov_device_ordinal(net->dev),
                    what, m, n, k, net->bf16 ? "bf16" : "f32", cublasGetStatusString(st));
}

/* C (f32, overwritten) = op(A) op(B) in cuBLAS's column-major terms, on f32 or, in a bf16 model, bf16 operands. */
static sov_status product(const mlp_cuda *net, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                          operand a, int lda, operand b, int ldb, float *c, int ldc, const char *what) {
    cublasHandle_t h = sov_device_blas(net->dev);
    if (!net->bf16)
        return blas_check(net, cublasSgemm(h, ta, tb, m, n, k, &one, a.f32, lda, b.f32, ldb, &zero, c, ldc), what, m, n,
                          k);
    return blas_check(net, cublasGemmEx(h, ta, tb, m, n, k, &one, a.bf16, CUDA_R_16BF, lda, b.bf16, CUDA_R_16BF, ldb,
                                        &zero, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      what, m, n, k);
}

/* The bf16 copy of `count` floats, in a bf16 model. */
static void cast(const mlp_cuda *net, uint16_t *dst, const float *src, size_t count) {
    if (net->bf16)
        sov_k_to_bf16(dst, src, count, sov_device_stream(net->dev));
}

/* Parameter tensor t of m as a product operand. */
static operand param(const sov_model *m, int t) {
    const mlp_cuda *net = m->impl;
    size_t off = m->tensors[t].offset;
    return (operand){m->params + off, net->params16 ? net->params16 + off : NULL};
}

static void mlp_cuda_destroy(sov_model *m) {
    mlp_cuda *net = m->impl;
    for (int l = 0; l <= net->layers; l++)
        sov_device_free(net->dev, net->acts[l]);
    for (int i = 0; i < 2; i++)
        sov_device_free(net->dev, net->delta[i]);
    sov_device_free(net->dev, net->labels);
    sov_device_free(net->dev, net->row_loss);
    sov_device_free(net->dev, net->row_correct);
    sov_device_free_host(net->dev, net->host_loss);
    sov_device_free_host(net->dev, net->host_correct);
    sov_device_free(net->dev, net->params16);
    for (int l = 0; l <= net->layers; l++)
        sov_device_free(net->dev, net->acts16[l]);
    sov_device_free(net->dev, net->delta16);
    free(net);
    m->impl = NULL;
}

static sov_status alloc_bf16(mlp_cuda *net, const sov_model *m, int widest) {
    size_t rows = (size_t)net->max_batch;
    net->bf16 = 1;
    if (!(net->params16 = sov_device_alloc(net->dev, m->num_params * sizeof(uint16_t))))
        return SOV_ERR_NOMEM;
    for (int l = 0; l < net->layers; l++) /* the logits are never an operand */
        if (!(net->acts16[l] = sov_device_alloc(net->dev, rows * (size_t)net->dims[l] * sizeof(uint16_t))))
            return SOV_ERR_NOMEM;
    net->delta16 = sov_device_alloc(net->dev, rows * (size_t)widest * sizeof(uint16_t));
    return net->delta16 ? SOV_OK : SOV_ERR_NOMEM;
}

static sov_status mlp_cuda_create(const sov_model_config *cfg, sov_model *m) {
    if (!cfg->device)
        return sov_fail(SOV_ERR_INTERNAL, "mlp (CUDA): created without a device");
    mlp_cuda *net = sov_calloc(1, sizeof *net);
    if (!net)
        return SOV_ERR_NOMEM;
    m->impl = net;
    net->dev = cfg->device;
    net->max_batch = cfg->max_batch;
    SOV_CHECK(sov_mlp_dims(cfg, net->dims, &net->layers));
    SOV_CHECK(sov_mlp_describe(m, net->dims, net->layers));
    size_t rows = (size_t)cfg->max_batch;
    int widest = 0;
    for (int l = 0; l <= net->layers; l++) {
        widest = net->dims[l] > widest ? net->dims[l] : widest;
        if (!(net->acts[l] = sov_device_alloc(net->dev, rows * (size_t)net->dims[l] * sizeof(float))))
            return SOV_ERR_NOMEM;
    }
    for (int i = 0; i < 2; i++)
        if (!(net->delta[i] = sov_device_alloc(net->dev, rows * (size_t)widest * sizeof(float))))
            return SOV_ERR_NOMEM;
    net->labels = sov_device_alloc(net->dev, rows * sizeof(int32_t));
    net->row_loss = sov_device_alloc(net->dev, rows * sizeof(float));
    net->row_correct = sov_device_alloc(net->dev, rows * sizeof(int32_t));
    net->host_loss = sov_device_alloc_host(net->dev, rows * sizeof(float));
    net->host_correct = sov_device_alloc_host(net->dev, rows * sizeof(int32_t));
    if (!net->labels || !net->row_loss || !net->row_correct || !net->host_loss || !net->host_correct)
        return SOV_ERR_NOMEM;
    return cfg->bf16 ? alloc_bf16(net, m, widest) : SOV_OK;
}

/* The CPU implementation's initial values (a function of the seed alone), copied to the GPU. */
static void mlp_cuda_init(sov_model *m, uint64_t seed) {
    mlp_cuda *net = m->impl;
    float *host = sov_aligned_alloc(m->num_params * sizeof(float));
    net->init_status = host ? SOV_OK : SOV_ERR_NOMEM;
    if (host) {
        sov_model view = *m;
        view.params = host;
        sov_mlp_init_params(&view, seed);
        net->init_status = sov_device_from_host(net->dev, m->params, host, m->num_params * sizeof(float));
        free(host);
    }
    if (net->init_status != SOV_OK)
        snprintf(net->init_error, sizeof net->init_error, "mlp (CUDA): initialising %zu parameters failed: %s",
                 m->num_params, sov_last_error());
}

/* Uploads the batch: inputs and labels. */
static sov_status upload(mlp_cuda *net, const sov_batch *b) {
    if (net->init_status != SOV_OK)
        return sov_fail(net->init_status, "%s", net->init_error);
    SOV_CHECK(sov_mlp_check_batch(b, net->max_batch, net->dims[net->layers]));
    SOV_CHECK(sov_device_from_host_async(net->dev, net->acts[0], b->x, (size_t)b->n * net->dims[0] * sizeof(float)));
    return sov_device_from_host_async(net->dev, net->labels, b->y, (size_t)b->n * sizeof(int32_t));
}

static sov_status forward(sov_model *m, int n) {
    mlp_cuda *net = m->impl;
    cast(net, net->params16, m->params, m->num_params);
    cast(net, net->acts16[0], net->acts[0], (size_t)n * net->dims[0]);
    for (int l = 0; l < net->layers; l++) {
        int in = net->dims[l], out = net->dims[l + 1];
        operand x = {net->acts[l], net->acts16[l]};
        SOV_CHECK(product(net, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, param(m, 2 * l), in, x, in, net->acts[l + 1], out,
                          "forward product"));
        sov_k_bias_act(net->acts[l + 1], m->params + m->tensors[2 * l + 1].offset, n, out, l + 1 < net->layers,
                       sov_device_stream(net->dev));
        if (l + 1 < net->layers)
            cast(net, net->acts16[l + 1], net->acts[l + 1], (size_t)n * out);
    }
    return sov_device_check_launch(net->dev, "mlp forward");
}

/* Per-row losses (and correct flags) to the host; *sum = their sum in row order, as the CPU adds them. */
static sov_status row_results(mlp_cuda *net, int n, double *sum, long *correct) {
    SOV_CHECK(sov_device_to_host(net->dev, net->host_loss, net->row_loss, (size_t)n * sizeof(float)));
    if (correct)
        SOV_CHECK(sov_device_to_host(net->dev, net->host_correct, net->row_correct, (size_t)n * sizeof(int32_t)));
    for (int i = 0; i < n; i++) {
        *sum += net->host_loss[i];
        if (correct)
            *correct += net->host_correct[i];
    }
    return SOV_OK;
}

/* Gradients of layer l's weight and bias from delta (n x out), reported to the hook once issued. */
static sov_status backward_layer(sov_model *m, int l, const float *delta, int n, const sov_grad_hook *hook) {
    mlp_cuda *net = m->impl;
    int in = net->dims[l], out = net->dims[l + 1];
    const sov_tensor *w = &m->tensors[2 * l], *b = &m->tensors[2 * l + 1];
    cast(net, net->delta16, delta, (size_t)n * out);
    operand a = {net->acts[l], net->acts16[l]}, d = {delta, net->delta16};
    SOV_CHECK(product(net, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, a, in, d, out, m->grads + w->offset, in,
                      "weight gradient"));
    sov_k_column_sum(m->grads + b->offset, delta, n, out, sov_device_stream(net->dev));
    SOV_CHECK(sov_device_check_launch(net->dev, "mlp bias gradient"));
    if (hook && hook->ready) /* the communicator orders its reduction after what this stream has issued so far */
        hook->ready(hook->ctx, w->offset, w->count + b->count);
    return SOV_OK;
}

static sov_status mlp_cuda_train_step(sov_model *m, const sov_batch *b, float *loss, const sov_grad_hook *hook) {
    mlp_cuda *net = m->impl;
    SOV_CHECK(upload(net, b));
    int n = b->n, classes = net->dims[net->layers];
    SOV_CHECK(forward(m, n));
    void *stream = sov_device_stream(net->dev);
    float *delta = net->delta[0];
    sov_k_softmax_xent(net->acts[net->layers], net->labels, n, classes, delta, net->row_loss, net->row_correct,
                       stream);
    for (int l = net->layers - 1; l >= 0; l--) {
        SOV_CHECK(backward_layer(m, l, delta, n, hook));
        if (l == 0)
            break;
        int in = net->dims[l], out = net->dims[l + 1];
        float *prev = net->delta[(net->layers - l) & 1];
        operand d = {delta, net->delta16}; /* delta16 still holds this layer's output gradient */
        SOV_CHECK(product(net, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, param(m, 2 * l), in, d, out, prev, in,
                          "input gradient"));
        sov_k_relu_backward(prev, net->acts[l], (size_t)n * in, stream);
        delta = prev;
    }
    double total = 0.0;
    SOV_CHECK(row_results(net, n, &total, NULL)); /* waits for backward too: it was issued before the copy */
    *loss = (float)(total / n);
    return SOV_OK;
}

static sov_status mlp_cuda_eval(sov_model *m, const sov_batch *b, double *loss_sum, long *correct) {
    mlp_cuda *net = m->impl;
    SOV_CHECK(upload(net, b));
    SOV_CHECK(forward(m, b->n));
    sov_k_softmax_xent(net->acts[net->layers], net->labels, b->n, net->dims[net->layers], NULL, net->row_loss,
                       net->row_correct, sov_device_stream(net->dev));
    return row_results(net, b->n, loss_sum, correct);
}

const sov_model_ops sov_mlp_cuda_ops = {
    .name = "mlp",
    .kind = SOV_MODEL_CLASSIFIER,
    .settings = sov_mlp_settings,
    .num_settings = SOV_MLP_NUM_SETTINGS,
    .create = mlp_cuda_create,
    .init = mlp_cuda_init,
    .train_step = mlp_cuda_train_step,
    .eval = mlp_cuda_eval,
    .destroy = mlp_cuda_destroy,
};
