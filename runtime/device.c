/* device.c: see device.h. The CUDA runtime and cuBLAS are called from C here; only kernels live in .cu files. */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *kind_names[] = {"auto", "cpu", "cuda"};

sov_status sov_device_kind_parse(const char *name, sov_device_kind *out) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (sov_device_kind)i;
            return SOV_OK;
        }
    return sov_fail(SOV_ERR_INVALID, "--device \"%s\": choose cpu, cuda or auto", name);
}

const char *sov_device_kind_name(sov_device_kind kind) {
    return (unsigned)kind < 3 ? kind_names[kind] : "?";
}

#ifndef SOVTRAIN_HAVE_CUDA

int sov_device_cuda_built(void) { return 0; }

sov_status sov_device_open(sov_device **out, int local_rank) {
    (void)local_rank;
    *out = NULL;
    return sov_fail(SOV_ERR_UNSUPPORTED, "--device cuda needs a CUDA build of sovtrain (this one was built without "
                    "the CUDA toolkit); use --device cpu");
}
void sov_device_close(sov_device *dev) { (void)dev; }
int sov_device_ordinal(const sov_device *dev) { (void)dev; return -1; }
const char *sov_device_name(const sov_device *dev) { (void)dev; return "none"; }
void *sov_device_stream(const sov_device *dev) { (void)dev; return NULL; }
void *sov_device_blas(const sov_device *dev) { (void)dev; return NULL; }
void *sov_device_alloc(sov_device *dev, size_t bytes) { (void)dev; (void)bytes; return NULL; }
void sov_device_free(sov_device *dev, void *ptr) { (void)dev; (void)ptr; }
void *sov_device_alloc_host(sov_device *dev, size_t bytes) { (void)dev; (void)bytes; return NULL; }
void sov_device_free_host(sov_device *dev, void *ptr) { (void)dev; (void)ptr; }
static sov_status no_cuda(void) { return sov_fail(SOV_ERR_UNSUPPORTED, "this build of sovtrain has no CUDA"); }
sov_status sov_device_to_host(sov_device *d, void *a, const void *b, size_t n) { (void)d, (void)a, (void)b, (void)n; return no_cuda(); }
sov_status sov_device_from_host(sov_device *d, void *a, const void *b, size_t n) { (void)d, (void)a, (void)b, (void)n; return no_cuda(); }
sov_status sov_device_from_host_async(sov_device *d, void *a, const void *b, size_t n) { (void)d, (void)a, (void)b, (void)n; return no_cuda(); }
sov_status sov_device_sync(sov_device *dev) { (void)dev; return no_cuda(); }
sov_status sov_device_check_launch(sov_device *dev, const char *what) { (void)dev; (void)what; return no_cuda(); }

#else

#include <cublas_v2.h>
#include <cuda_runtime.h>

struct sov_device {
    int ordinal;
    char name[256];
    cudaStream_t stream;
    cublasHandle_t blas;
};

int sov_device_cuda_built(void) { return 1; }

static sov_status cuda_fail(const char *what, cudaError_t err) {
    return sov_fail(SOV_ERR_IO, "CUDA: %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

#define CUDA_TRY(what, call)                    \
    do {                                        \
        cudaError_t cuda_try_err_ = (call);     \
        if (cuda_try_err_ != cudaSuccess)       \
            return cuda_fail(what, cuda_try_err_); \
    } while (0)

static sov_status open_device(sov_device *d, int local_rank) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
        return sov_fail(SOV_ERR_UNSUPPORTED, "--device cuda: no usable GPU: %s (%s); use --device cpu",
                        cudaGetErrorString(err), cudaGetErrorName(err));
    if (count == 0)
        return sov_fail(SOV_ERR_UNSUPPORTED, "--device cuda: the CUDA runtime sees no GPU (CUDA_VISIBLE_DEVICES=%s); "
                        "use --device cpu", getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
    d->ordinal = local_rank % count;
    CUDA_TRY("cudaSetDevice", cudaSetDevice(d->ordinal));
    struct cudaDeviceProp prop;
    CUDA_TRY("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, d->ordinal));
    snprintf(d->name, sizeof d->name, "%s", prop.name);
    CUDA_TRY("cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
    cublasStatus_t bs = cublasCreate(&d->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        d->blas = NULL;
        return sov_fail(SOV_ERR_IO, "cuBLAS: cublasCreate failed (status %d) on GPU %d", (int)bs, d->ordinal);
    }
    /* FP32 products stay FP32: no TF32 tensor-core rounding, so results track the CPU's within float error. */
    if ((bs = cublasSetStream(d->blas, d->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS)
        return sov_fail(SOV_ERR_IO, "cuBLAS: setting the stream and math mode on GPU %d failed: %s", d->ordinal,
                        cublasGetStatusString(bs));
    return SOV_OK;
}

sov_status sov_device_open(sov_device **out, int local_rank) {
    sov_device *d = sov_calloc(1, sizeof *d);
    if (!d)
        return SOV_ERR_NOMEM;
    sov_status st = open_device(d, local_rank);
    if (st != SOV_OK) {
        sov_device_close(d);
        return st;
    }
    *out = d;
    return SOV_OK;
}

void sov_device_close(sov_device *d) {
    if (!d)
        return;
    if (d->blas)
        cublasDestroy(d->blas);
    if (d->stream)
        cudaStreamDestroy(d->stream);
    free(d);
}

int sov_device_ordinal(const sov_device *d) { return d->ordinal; }
const char *sov_device_name(const sov_device *d) { return d->name; }
void *sov_device_stream(const sov_device *d) { return d->stream; }
void *sov_device_blas(const sov_device *d) { return d->blas; }

void *sov_device_alloc(sov_device *d, size_t bytes) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err == cudaSuccess)
        err = cudaMemsetAsync(p, 0, bytes ? bytes : 1, d->stream);
    if (err == cudaSuccess)
        err = cudaStreamSynchronize(d->stream);
    if (err != cudaSuccess) {
        sov_fail(SOV_ERR_NOMEM, "CUDA: allocating %zu bytes on GPU %d: %s", bytes, d->ordinal, cudaGetErrorString(err));
        if (p)
            cudaFree(p);
        return NULL;
    }
    return p;
}

void sov_device_free(sov_device *d, void *ptr) {
    (void)d;
    if (ptr)
        cudaFree(ptr);
}

void *sov_device_alloc_host(sov_device *d, size_t bytes) {
    void *p = NULL;
    cudaError_t err = cudaMallocHost(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        sov_fail(SOV_ERR_NOMEM, "CUDA: allocating %zu bytes of pinned host memory for GPU %d: %s", bytes, d->ordinal,
                 cudaGetErrorString(err));
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

void sov_device_free_host(sov_device *d, void *ptr) {
    (void)d;
    if (ptr)
        cudaFreeHost(ptr);
}

sov_status sov_device_to_host(sov_device *d, void *dst, const void *src, size_t bytes) {
    CUDA_TRY("copy to host", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, d->stream));
    return sov_device_sync(d);
}

sov_status sov_device_from_host(sov_device *d, void *dst, const void *src, size_t bytes) {
    SOV_CHECK(sov_device_from_host_async(d, dst, src, bytes));
    return sov_device_sync(d);
}

sov_status sov_device_from_host_async(sov_device *d, void *dst, const void *src, size_t bytes) {
    CUDA_TRY("copy to device", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d->stream));
    return SOV_OK;
}

sov_status sov_device_sync(sov_device *d) {
    CUDA_TRY("stream synchronize (a kernel or copy before it failed)", cudaStreamSynchronize(d->stream));
    return SOV_OK;
}

sov_status sov_device_check_launch(sov_device *d, const char *what) {
    (void)d;
    CUDA_TRY(what, cudaGetLastError());
    return SOV_OK;
}

#endif
