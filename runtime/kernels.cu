// kernels.cu: the CUDA kernels of the GPU path (see kernels.h). Built with -fmad=false, so no multiply-add is
// fused: the optimizer updates give the same bits as optim.c on the CPU, and the rest stays within float
// rounding of it (expf and logf differ from glibc's in the last place).
#include "kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(size_t count) {
    size_t b = (count + kThreads - 1) / kThreads;
    return (unsigned)(b < 65535 * 32 ? (b ? b : 1) : 65535 * 32);
}

cudaStream_t as_stream(void *s) { return static_cast<cudaStream_t>(s); }

__global__ void bias_act(float *z, const float *b, int n, int out, int relu) {
    size_t total = (size_t)n * out;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float v = z[i] + b[i % out];
        z[i] = relu && !(v > 0.0f) ? 0.0f : v;
    }
}

__global__ void relu_backward(float *d, const float *a, size_t count) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        d[i] = a[i] > 0.0f ? d[i] : 0.0f;
}

__global__ void column_sum(float *gb, const float *delta, int n, int out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out)
        return;
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += delta[(size_t)i * out + j];
    gb[j] = s;
}

// One thread per row: the classifier's rows are short (10 classes), and one thread keeps the CPU's order.
__global__ void softmax_xent(const float *logits, const int32_t *labels, int n, int classes, float *dlogits,
                             float *row_loss, int32_t *row_correct) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const float *z = logits + (size_t)i * classes;
    int label = labels[i];
    float mx = z[0];
    int best = 0;
    for (int c = 1; c < classes; c++)
        if (z[c] > mx) {
            mx = z[c];
            best = c;
        }
    float sum = 0.0f;
    for (int c = 0; c < classes; c++)
        sum += expf(z[c] - mx);
    bool ok = label >= 0 && label < classes;
    row_loss[i] = ok ? logf(sum) - (z[label] - mx) : nanf("");
    row_correct[i] = ok && best == label;
    if (!dlogits)
        return;
    float *d = dlogits + (size_t)i * classes;
    for (int c = 0; c < classes; c++) {
        float p = expf(z[c] - mx) / sum;
        d[c] = ((c == label ? p - 1.0f : p)) / (float)n;
    }
}

// Fixed grid and block: each block sums a fixed strided subset, then a fixed tree; no atomics.
__global__ void sumsq(const float *x, size_t count, double *partial) {
    __shared__ double acc[kThreads];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)kThreads + threadIdx.x; i < count; i += (size_t)SOV_K_SUMSQ_BLOCKS * kThreads)
        s += (double)x[i] * (double)x[i];
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half)
            acc[threadIdx.x] += acc[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = acc[0];
}

__global__ void sum_partials(const double *partial, int count, double *out) {
    double s = 0.0;
    for (int i = 0; i < count; i++)
        s += partial[i];
    *out = s;
}

__global__ void to_bf16(uint16_t *dst, const float *src, size_t count) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

__global__ void adamw(float *p, const float *g, float *m, float *v, size_t n, float b1, float b2, float eps,
                      float step, float inv_sqrt_bc2, float decay, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float grad = g[i] * scale;
        float mi = b1 * m[i] + (1.0f - b1) * grad;
        float vi = b2 * v[i] + (1.0f - b2) * grad * grad;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}

__global__ void sgd(float *p, const float *g, float *buf, size_t n, float mu, float lr, float wd, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float grad = g[i] * scale + wd * p[i];
        float b = mu * buf[i] + grad;
        buf[i] = b;
        p[i] -= lr * b;
    }
}

} // namespace

extern "C" {

void sov_k_bias_act(float *z, const float *b, int n, int out, int relu, void *stream) {
    bias_act<<<blocks_for((size_t)n * out), kThreads, 0, as_stream(stream)>>>(z, b, n, out, relu);
}

void sov_k_relu_backward(float *d, const float *a, size_t count, void *stream) {
    relu_backward<<<blocks_for(count), kThreads, 0, as_stream(stream)>>>(d, a, count);
}

void sov_k_column_sum(float *gb, const float *delta, int n, int out, void *stream) {
    column_sum<<<blocks_for((size_t)out), kThreads, 0, as_stream(stream)>>>(gb, delta, n, out);
}

void sov_k_softmax_xent(const float *logits, const int32_t *labels, int n, int classes, float *dlogits,
                        float *row_loss, int32_t *row_correct, void *stream) {
    softmax_xent<<<blocks_for((size_t)n), kThreads, 0, as_stream(stream)>>>(logits, labels, n, classes, dlogits,
                                                                            row_loss, row_correct);
}

void sov_k_sumsq(const float *x, size_t count, double *partial, void *stream) {
    sumsq<<<SOV_K_SUMSQ_BLOCKS, kThreads, 0, as_stream(stream)>>>(x, count, partial);
}

void sov_k_sum_partials(const double *partial, int count, double *out, void *stream) {
    sum_partials<<<1, 1, 0, as_stream(stream)>>>(partial, count, out);
}

void sov_k_to_bf16(uint16_t *dst, const float *src, size_t count, void *stream) {
    to_bf16<<<blocks_for(count), kThreads, 0, as_stream(stream)>>>(dst, src, count);
}

void sov_k_adamw(float *p, const float *g, float *m, float *v, size_t n, float beta1, float beta2, float eps,
                 float step, float inv_sqrt_bc2, float decay, float grad_scale, void *stream) {
    adamw<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(p, g, m, v, n, beta1, beta2, eps, step, inv_sqrt_bc2,
                                                             decay, grad_scale);
}

void sov_k_sgd(float *p, const float *g, float *buf, size_t n, float momentum, float lr, float weight_decay,
               float grad_scale, void *stream) {
    sgd<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(p, g, buf, n, momentum, lr, weight_decay, grad_scale);
}

} // extern "C"
