/* train_args.h (internal): the flags of `sovtrain train`, parsed and validated. */
#ifndef SOV_TRAIN_ARGS_H
#define SOV_TRAIN_ARGS_H

#include <sovtrain/comm.h>
#include "device.h"
#include "optim.h"
#include <sovtrain/runtime.h>

#include <stdio.h>

/* The most settings of its own a model trained by `sovtrain train` may have. */
#define SOV_TRAIN_MAX_SETTINGS 16

typedef struct sov_train_args {
    const char *model;
    const sov_model_ops *ops; /* the registry's entry for `model` */
    const char *settings[SOV_TRAIN_MAX_SETTINGS]; /* the model's own, in ops->settings order: as given, or default */
    const char *data_dir;    /* NULL: the model's default corpus */
    const char *run_dir;
    const char *dump_params; /* rank 0 writes the final flat parameters (raw little-endian f32) here */
    long epochs;
    long steps;        /* total steps; 0 = epochs x steps per epoch */
    int batch;         /* global batch, split evenly over the ranks */
    uint64_t seed;
    long eval_every;   /* steps; 0 = once per epoch */
    long log_every;    /* steps */
    int threads;       /* OpenBLAS threads per rank; 0 = cores / ranks on this host */
    sov_device_kind device; /* where the model computes: auto (a GPU per local rank when there are enough), cpu, cuda */
    int bf16;               /* --precision bf16: products in bf16 on the GPU, f32 master weights */
    sov_comm_backend comm;
    double comm_timeout; /* seconds before a stuck collective ends the job */
    double bucket_cap_mb; /* gradient bucket size; 0 = one allreduce after backward */
    const char *ckpt_dir; /* NULL: RUN_DIR/checkpoints */
    long ckpt_every;      /* steps; 0 = off */
    double ckpt_every_s;  /* seconds; 0 = off */
    int keep;
    int ckpt_threads;
    const char *resume;   /* NULL, "auto", "latest" or a path */
    const char *init_from; /* safetensors file seeding the parameters */
    const char *key_file;    /* --ckpt-key-file: encrypt checkpoints with this key, and read them with it */
    const char *key_command; /* --ckpt-key-command: the same through a key command */
    const char *sign_key;       /* --ckpt-sign-key: rank 0 signs each checkpoint with this ECDSA private key */
    const char *require_signed; /* --require-signed: resume only from checkpoints this public key signed */
    int stop_on_ckpt_error;
    int stop_exit_code;   /* the exit status after a signal's clean stop (0; an indexed Job wants non-zero) */
    sov_optim_config optim;
    int help;
} sov_train_args;

/* Parses argv (argv[0] is "train"): the trainer's flags, and each built-in model's settings as --NAME VALUE (those
 * of the model --model names only). Errors name the flag and the accepted values. */
sov_status sov_train_args_parse(int argc, char **argv, sov_train_args *args);
void sov_train_usage(FILE *out);

#endif
