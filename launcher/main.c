/* main.c: the `sovtrain` command, one client of libsovtrain. */
#include "blas_kernels.h"
#include "ckpt.h"
#include "launch.h"
#include "runtime.h"

#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *out) {
    fprintf(out,
            "usage: sovtrain <command> [options]\n"
            "\n"
            "commands:\n"
            "  launch    start a job of N ranks through Open MPI's mpirun (sovtrain launch --help)\n"
            "  train     one rank of a data-parallel training job (sovtrain train --help)\n"
            "  ckpt      list, verify, inspect and export checkpoints (sovtrain ckpt --help)\n"
            "  sample    generate text from a language model's checkpoint (sovtrain sample --help)\n"
            "  doctor    preflight report for this node: RDMA, NCCL settings, limits, GPUs, checkpoint disk\n"
            "  version   versions of sovtrain and the libraries it was built with\n"
            "\n"
            "example: sovtrain launch -np 2 -- sovtrain train --epochs 5 --run-dir runs/demo\n");
}

static int version(void) {
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpi, &len);
    char *nl = strchr(mpi, ',');
    if (nl)
        *nl = '\0';
    char why[256];
    int gpus = sov_gpu_count(why, sizeof why);
    printf("sovtrain %s\n%s\n%s\n", SOVTRAIN_VERSION, mpi, openblas_get_config());
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

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0 || strcmp(cmd, "sample") == 0)
        sov_blas_choose_kernels(argv); /* may restart this process with faster kernels (blas_kernels.h) */
    if (strcmp(cmd, "train") == 0)
        return sov_train_main(argc - 1, argv + 1);
    if (strcmp(cmd, "doctor") == 0)
        return sov_doctor_main(argc - 1, argv + 1);
    if (strcmp(cmd, "_rank") == 0)
        return sov_rank_main(argc - 1, argv + 1);
    if (strcmp(cmd, "ckpt") == 0)
        return sov_ckpt_main(argc - 1, argv + 1);
    if (strcmp(cmd, "sample") == 0)
        return sov_sample_main(argc - 1, argv + 1);
    if (strcmp(cmd, "launch") == 0)
        return sov_launch_main(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return version();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "sovtrain: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
