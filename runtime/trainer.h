/* trainer.h (internal): the state of one rank of `sovtrain train`, shared by train.c (the loop) and
 * train_ckpt.c (checkpoints, resume, preemption). */
#ifndef SOV_TRAINER_H
#define SOV_TRAINER_H

#include "buckets.h"
#include <sovtrain/ckpt.h>
#include "data.h"
#include "metrics.h"
#include "optim.h"
#include "device.h"
#include <sovtrain/runtime.h>
#include "train_args.h"

typedef struct trainer {
    sov_train_args args;
    sov_world world;
    sov_comm *comm;
    sov_device *dev;       /* the rank's GPU, or NULL when the model computes on the CPU */
    int lm;                /* a language model (its kind) on text; else a classifier on Fashion-MNIST */
    int context;           /* a language model's tokens per sequence (known once it is created); else 0 */
    sov_dataset train, test;
    sov_sampler sampler;
    sov_text text;
    sov_model *model;
    sov_optimizer opt;
    sov_metrics metrics;
    sov_buckets buckets;
    int local_batch;
    long steps_per_epoch, total_steps, eval_every;
    long start_step;       /* 0, or the step a checkpoint resumed at */
    int stopped;           /* a signal ended training early (after a checkpoint) */
    float *x;              /* classifier: local_batch x input_dim */
    int32_t *tokens;       /* language model: local_batch x context */
    int32_t *y;            /* local_batch labels, or local_batch x context next tokens */
    double test_loss, test_acc; /* on the test set, or the validation text (nats per byte, next-byte accuracy) */
    double train_seconds;  /* time in training steps, after the first warm-up steps */
    long timed_samples;    /* global samples in those steps */
    /* checkpoints */
    char ckpt_dir[4096];
    sov_ckpt_writer *ckpt;
    sov_ckpt_key *key;     /* --ckpt-key-file or --ckpt-key-command: checkpoints are encrypted */
    sov_ckpt_signer *signer; /* rank 0, --ckpt-sign-key: checkpoints are signed */
    long last_saved_step;  /* -1: none this run */
    double last_save_time;
} trainer;

/* The model's own settings by name, as given or defaulted: checkpoints and the start event record them. */
json_t *sov_trainer_settings_json(const sov_train_args *a);

/* The parameters in host memory: the model's own buffer on the CPU, else a fresh copy from the GPU (free it
 * with sov_trainer_release_params). NULL on failure. */
float *sov_trainer_host_params(trainer *t);
void sov_trainer_release_params(trainer *t, float *host);
/* Copies `count` floats from host memory into the model's (or optimizer's) buffer `dst`, wherever it lives. */
sov_status sov_trainer_upload(trainer *t, float *dst, const float *host, size_t count);

/* Opens the checkpoint writer and, with --resume, loads the newest usable checkpoint (every rank the same). */
sov_status sov_trainer_ckpt_init(trainer *t);
/* After step `done`: saves when one is due (every N steps, every S seconds, or a signal asked for it). Sets
 * *stop when a signal asked the job to stop: the checkpoint is then written and committed. */
sov_status sov_trainer_ckpt_step(trainer *t, long done, int *stop);
/* At the end of training: the final checkpoint, waited for. */
sov_status sov_trainer_ckpt_finish(trainer *t);
void sov_trainer_ckpt_close(trainer *t);
/* Installs the SIGTERM/SIGINT/SIGUSR1 handlers that ask for a checkpoint and a clean stop. */
void sov_trainer_install_signals(void);

#endif
