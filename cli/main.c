/* main.c: the `sovtrain` command's dispatcher. It is one client of libsovtrain: each subcommand is a function of
 * the library's public API (runtime.h, ckpt.h, launch.h). */
#include <sovtrain/ckpt.h>
#include <sovtrain/launch.h>
#include <sovtrain/runtime.h>

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

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0 || strcmp(cmd, "sample") == 0)
        sov_blas_choose_kernels(argv); /* may restart this process with faster kernels (runtime.h) */
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
        return sov_version_main(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "sovtrain: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
