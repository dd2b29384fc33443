/* train.c: `sovtrain train`, one rank of a data-parallel job.
 *
 * Every rank holds a full replica. Each step, rank r takes its contiguous part of the global batch (the same
 * global order at any world size), computes gradients of its mean loss, and the gradients are averaged across
 * ranks before every rank applies the same optimizer update, so replicas stay bitwise identical; the job checks
 * that at the end. */
#include "blas_kernels.h"
#include "registry.h"
#include "trainer.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

/* Steps excluded from throughput figures: first-touch page faults and BLAS warm-up. */
#define UNTIMED_STEPS 5

static int default_threads(const sov_world *w) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long t = cores > 0 ? cores / w->local_size : 1;
    return t < 1 ? 1 : (int)t;
}

static sov_status load_data(trainer *t) {
    if (t->lm)
        return sov_text_load(t->args.data_dir, &t->text);
    SOV_CHECK(sov_mnist_load(t->args.data_dir, "train", &t->train));
    SOV_CHECK(sov_mnist_load(t->args.data_dir, "t10k", &t->test));
    if (t->test.dim != t->train.dim)
        return sov_fail(SOV_ERR_FORMAT, "%s: test images have %d pixels but training images %d", t->args.data_dir,
                        t->test.dim, t->train.dim);
    return SOV_OK;
}

/* Training samples in one epoch: images, or for text the number of disjoint windows the training split holds. */
static long train_samples(const trainer *t) {
    return t->lm ? (long)(t->text.train_len / (size_t)t->context) : t->train.count;
}

/* Each rank's share of the global batch, which the model is created for. */
static sov_status split_batch(trainer *t) {
    if (t->args.batch % t->world.size != 0)
        return sov_fail(SOV_ERR_INVALID, "--batch %d (the global batch) must be a multiple of the %d ranks",
                        t->args.batch, t->world.size);
    t->local_batch = t->args.batch / t->world.size;
    return SOV_OK;
}

/* Steps, epochs and evaluations, from the training samples there are (for text, windows of the model's context). */
static sov_status plan_steps(trainer *t) {
    const sov_train_args *a = &t->args;
    if (t->lm)
        SOV_CHECK(sov_text_check_context(&t->text, t->context));
    if (a->batch > train_samples(t))
        return sov_fail(SOV_ERR_INVALID, "--batch %d exceeds the %ld training samples", a->batch, train_samples(t));
    t->steps_per_epoch = train_samples(t) / a->batch;
    t->total_steps = a->steps ? a->steps : a->epochs * t->steps_per_epoch;
    t->eval_every = a->eval_every ? a->eval_every : t->steps_per_epoch;
    t->args.optim.total_steps = t->total_steps;
    if (t->args.optim.warmup_steps > t->total_steps)
        t->args.optim.warmup_steps = t->total_steps;
    return SOV_OK;
}

/* Parameters and gradients live in the communicator's memory, so collectives read them in place; on a GPU, in
 * its memory (which is what NCCL reads). */
static void *comm_alloc(void *ctx, size_t bytes) { return sov_comm_alloc(ctx, bytes); }
static void comm_free(void *ctx, void *ptr) { sov_comm_free(ctx, ptr); }
static void *device_alloc(void *ctx, size_t bytes) { return sov_device_alloc(ctx, bytes); }
static void device_free(void *ctx, void *ptr) { sov_device_free(ctx, ptr); }

float *sov_trainer_host_params(trainer *t) {
    if (!t->dev)
        return t->model->params;
    size_t bytes = t->model->num_params * sizeof(float);
    float *host = sov_aligned_alloc(bytes);
    if (host && sov_device_to_host(t->dev, host, t->model->params, bytes) != SOV_OK) {
        free(host);
        return NULL;
    }
    return host;
}

void sov_trainer_release_params(trainer *t, float *host) {
    if (t->dev)
        free(host);
}

sov_status sov_trainer_upload(trainer *t, float *dst, const float *host, size_t count) {
    if (!t->dev) {
        if (dst != host)
            memcpy(dst, host, count * sizeof(float));
        return SOV_OK;
    }
    return sov_device_from_host(t->dev, dst, host, count * sizeof(float));
}

/* --init-from: the safetensors file's tensors, read on the host and placed wherever the parameters live. */
static sov_status init_from_file(trainer *t) {
    float *host = sov_trainer_host_params(t);
    if (!host)
        return SOV_ERR_NOMEM;
    sov_status st = SOV_OK;
    for (int i = 0; i < t->model->num_tensors && st == SOV_OK; i++) { /* the model's tensors; others are ignored */
        const sov_tensor *ten = &t->model->tensors[i];
        st = sov_safetensors_read(t->args.init_from, ten->name, SOV_F32, ten->ndim, ten->shape, host + ten->offset);
    }
    if (st == SOV_OK)
        st = sov_trainer_upload(t, t->model->params, host, t->model->num_params);
    sov_trainer_release_params(t, host);
    SOV_CHECK(st);
    sov_log("parameters from %s", t->args.init_from);
    return SOV_OK;
}

/* The model, initialised (or from --init-from) and the same on every rank. */
static sov_status build_model(trainer *t) {
    const sov_train_args *a = &t->args;
    sov_model_config cfg = {.input_dim = t->train.dim, .classes = t->lm ? SOV_TEXT_VOCAB : t->train.classes,
                            .max_batch = t->local_batch, .device = t->dev, .bf16 = a->bf16, .values = a->settings};
    sov_allocator memory = {.alloc = comm_alloc, .free = comm_free, .ctx = t->comm};
    if (t->dev)
        memory = (sov_allocator){.alloc = device_alloc, .free = device_free, .ctx = t->dev};
    SOV_CHECK(sov_model_create(a->model, &cfg, &memory, &t->model));
    t->context = t->lm ? t->model->predictions_per_sample : 0;
    sov_buckets_init(&t->buckets, t->comm, t->model->grads, t->model->num_params,
                     (size_t)(a->bucket_cap_mb * 1048576.0));
    t->model->ops->init(t->model, a->seed);
    if (a->init_from)
        SOV_CHECK(init_from_file(t));
    /* Same seed gives the same weights everywhere; broadcasting rank 0's makes replicas identical regardless. */
    return sov_comm_broadcast(t->comm, t->model->params, t->model->num_params, SOV_F32, 0);
}

/* The optimizer's state and this rank's batch buffers. */
static sov_status prepare_training(trainer *t) {
    SOV_CHECK(sov_optim_init(&t->opt, &t->args.optim, t->model->num_params, t->dev));
    size_t per_sample = (size_t)t->model->predictions_per_sample;
    if (t->lm)
        t->tokens = sov_calloc((size_t)t->local_batch * per_sample, sizeof *t->tokens);
    else
        t->x = sov_aligned_alloc((size_t)t->local_batch * (size_t)t->train.dim * sizeof(float));
    t->y = sov_calloc((size_t)t->local_batch * per_sample, sizeof *t->y);
    return (t->lm ? t->tokens != NULL : t->x != NULL) && t->y ? SOV_OK : SOV_ERR_NOMEM;
}

json_t *sov_trainer_settings_json(const sov_train_args *a) {
    json_t *settings = json_object();
    for (int i = 0; i < a->ops->num_settings; i++)
        json_object_set_new(settings, a->ops->settings[i].name, json_string(a->settings[i]));
    return settings;
}

static sov_status emit_start(trainer *t) {
    const sov_train_args *a = &t->args;
    char where[300] = "cpu";
    if (t->dev)
        snprintf(where, sizeof where, "GPU %d (%s%s)", sov_device_ordinal(t->dev), sov_device_name(t->dev),
                 a->bf16 ? ", bf16 products" : "");
    sov_log("sovtrain %s: %s model on %s, %zu parameters, %d rank%s (%s comm), global batch %d (%d per rank), %ld "
            "steps (%.2f epochs), %s lr %.2e",
            sov_version(), a->model, where, t->model->num_params, t->world.size, t->world.size > 1 ? "s" : "",
            sov_comm_backend_name(sov_comm_backend_of(t->comm)), a->batch, t->local_batch, t->total_steps,
            (double)t->total_steps / (double)t->steps_per_epoch,
            a->optim.kind == SOV_OPTIM_ADAMW ? "adamw" : "sgd", (double)a->optim.lr);
    const char *blas_note = sov_blas_kernels_note();
    if (*blas_note)
        sov_log("%s", blas_note);
    json_t *ev = json_pack("{s:s, s:s, s:s, s:I, s:i, s:i, s:i, s:I, s:I, s:s, s:f, s:s, s:I}", "event", "start",
                           "version", sov_version(), "model", a->model, "num_params", (json_int_t)t->model->num_params,
                           "world_size", t->world.size, "global_batch", a->batch, "local_batch", t->local_batch,
                           "steps", (json_int_t)t->total_steps, "steps_per_epoch", (json_int_t)t->steps_per_epoch,
                           "optimizer", a->optim.kind == SOV_OPTIM_ADAMW ? "adamw" : "sgd", "lr", (double)a->optim.lr,
                           "comm", sov_comm_backend_name(sov_comm_backend_of(t->comm)), "seed", (json_int_t)a->seed);
    json_object_set_new(ev, "blas_kernels", json_string(sov_blas_kernels()));
    json_object_set_new(ev, "settings", sov_trainer_settings_json(a));
    if (t->lm) {
        json_object_set_new(ev, "train_bytes", json_integer((json_int_t)t->text.train_len));
        json_object_set_new(ev, "val_bytes", json_integer((json_int_t)(t->text.len - t->text.train_len)));
    }
    json_object_set_new(ev, "bucket_cap_mb", json_real(a->bucket_cap_mb));
    json_object_set_new(ev, "device", json_string(t->dev ? "cuda" : "cpu"));
    json_object_set_new(ev, "precision", json_string(a->bf16 ? "bf16" : "f32"));
    if (t->dev)
        json_object_set_new(ev, "gpu", json_string(sov_device_name(t->dev)));
    return sov_metrics_emit(&t->metrics, ev);
}

/* Metric names of the held-out set: the test images, or the validation text. */
static const char *held_out_loss_key(const trainer *t) { return t->lm ? "val_loss" : "test_loss"; }
static const char *held_out_acc_key(const trainer *t) { return t->lm ? "val_acc" : "test_acc"; }

/* Samples [first, first + m) of the held-out set (test images, or validation windows) as a batch. */
static sov_batch held_out_batch(trainer *t, int first, int m, int32_t *idx) {
    if (t->lm) {
        sov_text_val_batch(&t->text, first, m, t->context, t->tokens, t->y);
        return (sov_batch){.n = m, .tokens = t->tokens, .y = t->y};
    }
    for (int k = 0; k < m; k++)
        idx[k] = first + k;
    sov_dataset_gather(&t->test, idx, m, t->x, t->y);
    return (sov_batch){.n = m, .x = t->x, .y = t->y};
}

/* Loss and accuracy over the whole held-out set (per prediction: per image, or per byte of validation text);
 * rank r evaluates its contiguous share. */
static sov_status evaluate(trainer *t, long step) {
    int n = t->lm ? sov_text_val_windows(&t->text, t->context) : t->test.count;
    int lo = (int)((long)n * t->world.rank / t->world.size), hi = (int)((long)n * (t->world.rank + 1) / t->world.size);
    double sums[3] = {0.0, 0.0, (double)(hi - lo) * t->model->predictions_per_sample}; /* loss, correct, predictions */
    int32_t *idx = sov_calloc((size_t)t->local_batch, sizeof *idx);
    if (!idx)
        return SOV_ERR_NOMEM;
    sov_status st = SOV_OK;
    for (int i = lo; i < hi && st == SOV_OK; i += t->local_batch) {
        int m = hi - i < t->local_batch ? hi - i : t->local_batch;
        sov_batch batch = held_out_batch(t, i, m, idx);
        long correct = 0;
        st = t->model->ops->eval(t->model, &batch, &sums[0], &correct);
        sums[1] += (double)correct;
    }
    free(idx);
    SOV_CHECK(st);
    SOV_CHECK(sov_comm_allreduce(t->comm, sums, sums, 3, SOV_F64, SOV_SUM));
    t->test_loss = sums[0] / sums[2];
    t->test_acc = sums[1] / sums[2];
    if (t->lm)
        sov_log("eval   step %ld: val loss %.4f nats/byte (%.3f bits/byte), next-byte accuracy %.4f", step,
                t->test_loss, t->test_loss / log(2.0), t->test_acc);
    else
        sov_log("eval   step %ld: test loss %.4f, test accuracy %.4f", step, t->test_loss, t->test_acc);
    return sov_metrics_emit(&t->metrics,
                            json_pack("{s:s, s:I, s:f, s:f}", "event", "eval", "step", (json_int_t)step,
                                      held_out_loss_key(t), t->test_loss, held_out_acc_key(t), t->test_acc));
}

/* Averages the loss over the ranks and the steps since the last report, and prints the progress line. */
static sov_status report_progress(trainer *t, long step, double *loss_acc, long *loss_steps, double *since,
                                  float lr, double grad_norm) {
    double buf[2] = {*loss_acc, (double)*loss_steps};
    SOV_CHECK(sov_comm_allreduce(t->comm, buf, buf, 2, SOV_F64, SOV_SUM));
    double loss = buf[0] / buf[1], now = sov_now();
    double sps = (double)*loss_steps * t->args.batch / (now - *since);
    if (!isfinite(loss))
        return sov_fail(SOV_ERR_INVALID, "training diverged: loss is %f at step %ld (try a lower --lr or --clip-grad)",
                        loss, step);
    double tps = sps * t->model->predictions_per_sample; /* tokens/s for a language model */
    if (t->lm)
        sov_log("step %6ld/%ld  epoch %.2f  loss %.4f  lr %.2e  %.0f tokens/s", step, t->total_steps,
                (double)step / (double)t->steps_per_epoch, loss, (double)lr, tps);
    else
        sov_log("step %6ld/%ld  epoch %.2f  loss %.4f  lr %.2e  %.0f samples/s", step, t->total_steps,
                (double)step / (double)t->steps_per_epoch, loss, (double)lr, sps);
    *loss_acc = 0.0;
    *loss_steps = 0;
    *since = now;
    json_t *ev = json_pack("{s:s, s:I, s:f, s:f, s:f, s:f, s:f}", "event", "step", "step", (json_int_t)step, "epoch",
                           (double)step / (double)t->steps_per_epoch, "loss", loss, "lr", (double)lr, "samples_per_s",
                           sps, "grad_norm", grad_norm);
    if (t->lm)
        json_object_set_new(ev, "tokens_per_s", json_real(tps));
    return sov_metrics_emit(&t->metrics, ev);
}

/* This rank's part of the global batch of `step`. */
static sov_batch train_batch(trainer *t, long step) {
    if (t->lm) {
        sov_text_train_batch(&t->text, t->args.seed, step, t->args.batch, t->world.rank, t->local_batch,
                             t->context, t->tokens, t->y);
        return (sov_batch){.n = t->local_batch, .tokens = t->tokens, .y = t->y};
    }
    const int32_t *idx = sov_sampler_batch(&t->sampler, step, t->args.batch, t->world.rank, t->local_batch);
    sov_dataset_gather(&t->train, idx, t->local_batch, t->x, t->y);
    return (sov_batch){.n = t->local_batch, .x = t->x, .y = t->y};
}

static sov_status train_step(trainer *t, long step, float *loss, float *lr, double *grad_norm) {
    sov_batch batch = train_batch(t, step);
    sov_buckets_begin(&t->buckets);
    sov_grad_hook hook = sov_buckets_hook(&t->buckets);
    sov_status st = t->model->ops->train_step(t->model, &batch, loss, &hook);
    sov_status reduced = sov_buckets_finish(&t->buckets); /* waits for buckets in flight even after a failure */
    SOV_CHECK(st);
    SOV_CHECK(reduced);
    *lr = sov_lr_at(&t->opt.cfg, step);
    return sov_optim_step(&t->opt, t->model, *lr, grad_norm);
}

/* Trains from t->start_step; returns with *stopped set when a signal ended training early. */
static sov_status train_loop(trainer *t, int *stopped) {
    double loss_acc = 0.0, since = sov_now(), grad_norm = 0.0;
    long loss_steps = 0;
    float lr = 0.0f;
    *stopped = 0;
    for (long step = t->start_step; step < t->total_steps; step++) {
        double t0 = sov_now();
        float loss;
        SOV_CHECK(train_step(t, step, &loss, &lr, &grad_norm));
        if (step >= t->start_step + UNTIMED_STEPS || t->total_steps - t->start_step <= 2 * UNTIMED_STEPS) {
            t->train_seconds += sov_now() - t0;
            t->timed_samples += t->args.batch;
        }
        loss_acc += loss;
        loss_steps++;
        long done = step + 1;
        if (done % t->args.log_every == 0 || done == t->total_steps)
            SOV_CHECK(report_progress(t, done, &loss_acc, &loss_steps, &since, lr, grad_norm));
        if (done % t->eval_every == 0 && done != t->total_steps) {
            double eval_start = sov_now();
            SOV_CHECK(evaluate(t, done));
            since += sov_now() - eval_start; /* throughput counts training time only */
        }
        double ckpt_start = sov_now();
        SOV_CHECK(sov_trainer_ckpt_step(t, done, stopped));
        since += sov_now() - ckpt_start;
        if (*stopped)
            return SOV_OK;
    }
    SOV_CHECK(evaluate(t, t->total_steps));
    return sov_trainer_ckpt_finish(t);
}

/* All ranks hash their parameters; every rank compares every hash with rank 0's. */
static sov_status check_replicas(trainer *t, uint64_t *hash_out) {
    float *params = sov_trainer_host_params(t);
    if (!params)
        return SOV_ERR_NOMEM;
    uint64_t mine = XXH3_64bits(params, t->model->num_params * sizeof(float));
    sov_trainer_release_params(t, params);
    uint64_t *all = sov_calloc((size_t)t->world.size, sizeof *all);
    if (!all)
        return SOV_ERR_NOMEM;
    sov_status st = sov_comm_allgather(t->comm, &mine, all, sizeof mine, SOV_U8);
    for (int r = 1; st == SOV_OK && r < t->world.size; r++)
        if (all[r] != all[0])
            st = sov_fail(SOV_ERR_INTERNAL, "replicas diverged: rank %d's parameters (xxh3 %016llx) differ from rank "
                          "0's (%016llx)", r, (unsigned long long)all[r], (unsigned long long)all[0]);
    free(all);
    *hash_out = mine;
    return st;
}

static sov_status dump_params(trainer *t) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", t->args.dump_params);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return sov_fail(SOV_ERR_IO, "--dump-params: cannot create %s: %s", tmp, strerror(errno));
    size_t n = t->model->num_params;
    float *params = sov_trainer_host_params(t);
    if (!params) {
        fclose(f);
        unlink(tmp);
        return sov_fail(SOV_ERR_IO, "--dump-params: cannot copy the parameters from the GPU: %s", sov_last_error());
    }
    int bad = fwrite(params, sizeof(float), n, f) != n;
    sov_trainer_release_params(t, params);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, t->args.dump_params) != 0) {
        int e = errno;
        unlink(tmp);
        return sov_fail(SOV_ERR_IO, "--dump-params: writing %s failed: %s", t->args.dump_params, strerror(e));
    }
    return SOV_OK;
}

static sov_status finish(trainer *t, double wall) {
    uint64_t hash;
    SOV_CHECK(check_replicas(t, &hash));
    double sps = t->train_seconds > 0 ? (double)t->timed_samples / t->train_seconds : 0.0;
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hash);
    char resumed[64] = "";
    if (t->start_step > 0)
        snprintf(resumed, sizeof resumed, " (%ld of them in this run)", t->total_steps - t->start_step);
    const char *plural = t->world.size > 1 ? "s" : "";
    double tps = sps * t->model->predictions_per_sample;
    if (t->lm)
        sov_log("done: %ld steps%s in %.1f s, val loss %.4f nats/byte (next-byte accuracy %.4f), %.0f tokens/s; "
                "parameters identical on all %d rank%s (xxh3 %s)",
                t->total_steps, resumed, wall, t->test_loss, t->test_acc, tps, t->world.size, plural, hex);
    else
        sov_log("done: %ld steps%s in %.1f s, test accuracy %.4f (test loss %.4f), %.0f samples/s; parameters "
                "identical on all %d rank%s (xxh3 %s)",
                t->total_steps, resumed, wall, t->test_acc, t->test_loss, sps, t->world.size, plural, hex);
    if (t->world.rank == 0 && t->args.dump_params)
        SOV_CHECK(dump_params(t));
    json_t *ev = json_pack("{s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:i, s:s}", "event", "done", "step",
                           (json_int_t)t->total_steps, held_out_loss_key(t), t->test_loss, held_out_acc_key(t),
                           t->test_acc, "samples_per_s", sps, "train_s", t->train_seconds, "wall_s", wall, "world_size",
                           t->world.size, "params_xxh3", hex);
    if (t->lm)
        json_object_set_new(ev, "tokens_per_s", json_real(tps));
    return sov_metrics_emit(&t->metrics, ev);
}

static sov_status run(trainer *t) {
    double start = sov_now();
    openblas_set_num_threads(t->args.threads ? t->args.threads : default_threads(&t->world));
    SOV_CHECK(load_data(t));
    SOV_CHECK(split_batch(t));
    SOV_CHECK(build_model(t));
    SOV_CHECK(plan_steps(t));
    if (!t->lm)
        SOV_CHECK(sov_sampler_init(&t->sampler, t->train.count, t->args.seed));
    SOV_CHECK(prepare_training(t));
    if (t->world.rank == 0)
        SOV_CHECK(sov_metrics_open(&t->metrics, t->args.run_dir));
    SOV_CHECK(sov_trainer_ckpt_init(t));
    SOV_CHECK(emit_start(t));
    SOV_CHECK(train_loop(t, &t->stopped));
    if (t->stopped) {
        uint64_t hash;
        return check_replicas(t, &hash);
    }
    return finish(t, sov_now() - start);
}

static void teardown(trainer *t) {
    sov_trainer_ckpt_close(t);
    sov_metrics_close(&t->metrics);
    sov_optim_free(&t->opt);
    sov_model_destroy(t->model);
    sov_sampler_free(&t->sampler);
    sov_dataset_free(&t->train);
    sov_dataset_free(&t->test);
    sov_text_free(&t->text);
    free(t->tokens);
    free(t->x);
    free(t->y);
    sov_comm_destroy(t->comm);
    sov_device_close(t->dev);
}

/* --device auto: the GPU when every rank on this host gets one of its own (`sovtrain launch` says in
 * SOVTRAIN_HOST_GPUS how many the rank's was picked from) and the model has a CUDA implementation. */
static sov_device_kind auto_device(const trainer *t) {
    char why[256];
    if (sov_host_gpus(sov_gpu_count(why, sizeof why)) < t->world.local_size || !sov_model_find_cuda(t->args.model))
        return SOV_DEVICE_CPU;
    return SOV_DEVICE_CUDA;
}

static sov_status choose_device(trainer *t) {
    sov_device_kind kind = t->args.device == SOV_DEVICE_AUTO ? auto_device(t) : t->args.device;
    if (kind != SOV_DEVICE_CUDA)
        return t->args.bf16 ? sov_fail(SOV_ERR_INVALID, "--precision bf16 runs on a GPU only, and this job computes "
                                       "on the CPU (--device %s): use --device cuda or --precision f32",
                                       sov_device_kind_name(t->args.device))
                            : SOV_OK;
    if (!sov_device_cuda_built())
        return sov_device_open(&t->dev, t->world.local_rank); /* fails, saying this build has no CUDA */
    if (!sov_model_find_cuda(t->args.model)) {
        char names[256];
        sov_model_names(sov_model_has_cuda, names, sizeof names);
        return sov_fail(SOV_ERR_INVALID, "--device cuda: the %s model has no CUDA implementation yet (models with "
                        "one: %s); use --device cpu", t->args.model, names);
    }
    sov_comm_backend b = t->args.comm;
    if (b != SOV_COMM_AUTO && b != SOV_COMM_NCCL && b != SOV_COMM_SELF)
        return sov_fail(SOV_ERR_INVALID, "--device cuda keeps gradients in GPU memory, which the %s backend cannot "
                        "reduce: use --comm nccl (or auto), or --device cpu", sov_comm_backend_name(b));
    return sov_device_open(&t->dev, t->world.local_rank);
}

int sov_train_main(int argc, char **argv) {
    trainer t = {.last_saved_step = -1};
    if (sov_train_args_parse(argc, argv, &t.args) != SOV_OK) {
        fprintf(stderr, "sovtrain train: %s\n(see `sovtrain train --help`)\n", sov_last_error());
        return 2;
    }
    if (t.args.help) {
        sov_train_usage(stdout);
        return 0;
    }
    t.lm = t.args.ops->kind == SOV_MODEL_LANGUAGE;
    if (sov_world_from_env(&t.world) != SOV_OK) {
        fprintf(stderr, "sovtrain train: %s\n", sov_last_error());
        return 2;
    }
    sov_log_set_rank(t.world.rank, t.world.size);
    sov_trainer_install_signals();
    sov_status dst = choose_device(&t);
    if (dst != SOV_OK) {
        sov_log_error("rank %d: %s", t.world.rank, sov_last_error());
        sov_device_close(t.dev);
        return dst == SOV_ERR_INVALID ? 2 : 1;
    }
    sov_comm_config comm_cfg = {.backend = t.args.comm, .timeout_s = t.args.comm_timeout, .gpu = t.dev != NULL};
    if (sov_comm_init(&t.comm, &t.world, &comm_cfg) != SOV_OK) {
        sov_log_error("%s", sov_last_error());
        sov_device_close(t.dev);
        return 1;
    }
    if (t.dev)
        sov_comm_set_stream(t.comm, sov_device_stream(t.dev));
    sov_status st = run(&t);
    if (st != SOV_OK) {
        char who[32]; /* messages from the collectives already say which rank they are about */
        snprintf(who, sizeof who, "rank %d: ", t.world.rank);
        const char *msg = sov_last_error();
        sov_log_error("%s%s", strncmp(msg, who, strlen(who)) == 0 ? "" : who, msg);
        /* exit 2 for a bad configuration, which a restart would only repeat; 1 for anything else */
        /* ends the job (MPI_Abort) under mpirun; returns for one rank, and for tcp or nccl without mpirun, where the
         * other ranks see their connections end */
        sov_comm_abort(t.comm, st == SOV_ERR_INVALID ? 2 : 1);
    }
    teardown(&t);
    if (st == SOV_OK)
        return t.stopped ? t.args.stop_exit_code : 0;
    return st == SOV_ERR_INVALID ? 2 : 1;
}
