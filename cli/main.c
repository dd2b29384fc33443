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

/* Each subcommand: its name, the library function that runs it, and whether it computes with OpenBLAS. */
static const struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    int computes;
} commands[] = {
    {"launch", sov_launch_main, 0}, {"train", sov_train_main, 1},    {"ckpt", sov_ckpt_main, 0},
    {"sample", sov_sample_main, 1}, {"doctor", sov_doctor_main, 0},  {"version", sov_version_main, 0},
    {"--version", sov_version_main, 0},
    {"_rank", sov_rank_main, 0}, /* what `sovtrain launch` runs on each rank before the user's command */
};

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(cmd, commands[i].name) != 0)
            continue;
        if (commands[i].computes)
            sov_blas_choose_kernels(argv); /* may restart this process with faster kernels (runtime.h) */
        return commands[i].run(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "sovtrain: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
