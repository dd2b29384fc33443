// gpu_probe.cu: asks the CUDA runtime how many devices this process sees, and NCCL for its version.
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>

extern "C" int sov_cuda_probe(int *count, char *why, size_t cap) {
    *count = 0;
    cudaError_t err = cudaGetDeviceCount(count);
    if (err != cudaSuccess) {
        snprintf(why, cap, "CUDA runtime: %s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
        *count = 0;
        return 1;
    }
    if (*count == 0) {
        snprintf(why, cap, "CUDA runtime sees no device");
        return 1;
    }
    int nccl = 0;
    ncclGetVersion(&nccl);
    snprintf(why, cap, "NCCL %d.%d.%d", nccl / 10000, (nccl / 100) % 100, nccl % 100);
    return 0;
}
