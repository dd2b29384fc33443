/* gpu.c: whether a GPU is usable here. The CUDA build asks the CUDA runtime (gpu_probe.cu); every CUDA error,
 * including cudaErrorInsufficientDriver on a machine with the toolkit but no driver, means "no GPU". */
#include "device.h"
#include <sovtrain/runtime.h>

#include <stdio.h>

#ifdef SOVTRAIN_HAVE_CUDA
int sov_cuda_probe(int *count, char *why, size_t cap);

int sov_gpu_count(char *why, size_t cap) {
    int count = 0;
    return sov_cuda_probe(&count, why, cap) == 0 ? count : 0;
}
#else
int sov_gpu_count(char *why, size_t cap) {
    snprintf(why, cap, "sovtrain was built without CUDA");
    return 0;
}
#endif
