/* kernels.h (internal): the CUDA kernels of the GPU path, as C-callable launchers. Each launches on `stream`
 * (a cudaStream_t) and returns at once; launch errors surface at the next sov_device_check_launch or sync.
 *
 * Every reduction here runs in a fixed order (no atomics), so equal inputs give equal bits on every rank: the
 * replicas of a data-parallel job stay bitwise identical on GPUs as they do on CPUs. */
#ifndef SOV_KERNELS_H
#define SOV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* z[i][j] += b[j] over an n x out row-major matrix, then max(z, 0) when relu is set. */
void sov_k_bias_act(float *z, const float *b, int n, int out, int relu, void *stream);
/* d[i] = a[i] > 0 ? d[i] : 0 (ReLU's backward). */
void sov_k_relu_backward(float *d, const float *a, size_t count, void *stream);
/* gb[j] = sum over i of delta[i][j] (n x out row-major), in order i = 0, 1, ... */
void sov_k_column_sum(float *gb, const float *delta, int n, int out, void *stream);
/* Per row i of an n x classes matrix of logits: row_loss[i] = softmax cross-entropy against labels[i];
 * row_correct[i] = 1 when the first largest logit is the label's. When dlogits is not NULL it receives the
 * gradient of the batch's mean loss, (softmax - onehot) / n. Labels outside 0..classes-1 give a NaN loss. */
void sov_k_softmax_xent(const float *logits, const int32_t *labels, int n, int classes, float *dlogits,
                        float *row_loss, int32_t *row_correct, void *stream);
/* partial[0..SOV_K_SUMSQ_BLOCKS) receives per-block sums of x[i]^2 in double (x in float); then
 * sov_k_sum_partials adds them, in order, into *out. */
#define SOV_K_SUMSQ_BLOCKS 256
void sov_k_sumsq(const float *x, size_t count, double *partial, void *stream);
void sov_k_sum_partials(const double *partial, int count, double *out, void *stream);
/* dst[i] = src[i] rounded to bfloat16 (to nearest even), as uint16 bits. */
void sov_k_to_bf16(uint16_t *dst, const float *src, size_t count, void *stream);
/* One AdamW update (PyTorch's rule, as optim.c writes it on the CPU). */
void sov_k_adamw(float *p, const float *g, float *m, float *v, size_t n, float beta1, float beta2, float eps,
                 float step, float inv_sqrt_bc2, float decay, float grad_scale, void *stream);
/* One SGD-with-momentum update (L2 weight decay in the gradient). */
void sov_k_sgd(float *p, const float *g, float *buf, size_t n, float momentum, float lr, float weight_decay,
               float grad_scale, void *stream);

#ifdef __cplusplus
}
#endif

#endif
