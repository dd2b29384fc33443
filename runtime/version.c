/* version.c: `sovtrain version`: what this build is and which libraries and kernels it runs on. */
#include "blas_kernels.h"
#include "sov_internal.h"
#include "device.h"
#include <sovtrain/runtime.h>

#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int sov_version_main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpi, &len);
    char *nl = strchr(mpi, ',');
    if (nl)
        *nl = '\0';
    char why[256];
    int gpus = sov_gpu_count(why, sizeof why);
    printf("sovtrain %s\n%s\n%s\n", sov_version(), mpi, openblas_get_config());
    const char *better = sov_blas_replacement();
    if (better)
        printf("BLAS kernels: %s; train and sample switch to %s (OpenBLAS does not know this CPU)\n",
               sov_blas_kernels(), better);
    else
        printf("BLAS kernels: %s\n", sov_blas_kernels());
    if (gpus)
        printf("GPUs: %d (%s)\n", gpus, why);
    else
        printf("GPUs: none (%s)\n", why);
    return 0;
}
