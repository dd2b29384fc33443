/* train_ckpt.c: checkpoints of `sovtrain train`: periodic and final saves, resume with fallback, and the clean
 * stop on SIGTERM/SIGINT/SIGUSR1 (preemption): every rank finishes its step, the ranks agree on the step, a
 * checkpoint is written and committed, and the job exits 0. */
#include "model_ckpt.h"
#include "trainer.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

/* The stop's cause as the log names it: the ranks stop together when any of them got a signal. */
static const char *stop_reason(void) {
    switch (stop_signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "another rank's signal";
    }
}

void sov_trainer_install_signals(void) {
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* Slurm's usual preemption warning */
}

static int enabled(const trainer *t) {
    return t->args.ckpt_every > 0 || t->args.ckpt_every_s > 0 || t->args.resume || t->args.ckpt_dir;
}

/* ---- the state a checkpoint holds ---- */

/* meta.config: the model by name with its own settings, from which `sovtrain sample` rebuilds it, and the job's
 * shape. */
static json_t *config_meta(const trainer *t) {
    const sov_train_args *a = &t->args;
    json_t *config = json_pack("{s:s}", "model", a->model);
    json_object_update_new(config, sov_trainer_settings_json(a));
    json_object_update_new(config, json_pack("{s:I, s:i, s:I, s:I}", "num_params", (json_int_t)t->model->num_params,
                                         "global_batch", a->batch, "seed", (json_int_t)a->seed, "total_steps",
                                         (json_int_t)t->total_steps));
    if (t->lm)
        json_object_set_new(config, "vocab", json_integer(SOV_TEXT_VOCAB));
    return config;
}

static json_t *meta(const trainer *t) {
    const sov_optim_config *o = &t->opt.cfg;
    return json_pack("{s:o, s:{s:s, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:f}, s:{s:I, s:I}}",
                     "config", config_meta(t),
                     "optimizer", "kind", o->kind == SOV_OPTIM_ADAMW ? "adamw" : "sgd", "t", (json_int_t)t->opt.t,
                     "lr", (double)o->lr, "momentum", (double)o->momentum, "beta1", (double)o->beta1, "beta2",
                     (double)o->beta2, "eps", (double)o->eps, "weight_decay", (double)o->weight_decay, "clip_norm",
                     (double)o->clip_norm, "warmup_steps", (json_int_t)o->warmup_steps, "total_steps",
                     (json_int_t)o->total_steps, "min_lr_ratio", (double)o->min_lr_ratio,
                     "data", "step", (json_int_t)0, "samples_seen", (json_int_t)0);
}

/* The optimizer's state as flat 1-D tensors: its moments over the whole flat parameter buffer. */
static int optimizer_tensors(const trainer *t, const float *m, const float *v, sov_ckpt_tensor *out) {
    const int64_t n = (int64_t)t->opt.count;
    out[0] = (sov_ckpt_tensor){.name = v ? "adamw.m" : "sgd.momentum", .dtype = SOV_F32, .ndim = 1, .shape = {n},
                               .data = m};
    if (!v)
        return 1;
    out[1] = (sov_ckpt_tensor){.name = "adamw.v", .dtype = SOV_F32, .ndim = 1, .shape = {n}, .data = v};
    return 2;
}

/* The job's state at `step`: the model's tensors, the optimizer's, and meta as text (free both with free()). */
static sov_status fill_state(trainer *t, long step, sov_ckpt_state *s, json_t *m) {
    json_t *data = json_object_get(m, "data");
    json_object_set_new(data, "step", json_integer(step));
    json_object_set_new(data, "samples_seen", json_integer((json_int_t)step * t->args.batch));
    sov_ckpt_tensor *tensors = sov_calloc((size_t)t->model->num_tensors + 2, sizeof *tensors);
    char *meta = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
    sov_status st = tensors && meta ? sov_model_ckpt_tensors(t->model, t->model->params, tensors) : SOV_ERR_NOMEM;
    if (st != SOV_OK) {
        free(tensors);
        free(meta);
        return st;
    }
    int n = t->model->num_tensors + optimizer_tensors(t, t->opt.m, t->opt.v, tensors + t->model->num_tensors);
    *s = (sov_ckpt_state){.step = step, .num_tensors = n, .tensors = tensors, .meta_json = meta};
    return SOV_OK;
}

static void free_state(sov_ckpt_state *s) {
    free((void *)s->tensors);
    free((void *)s->meta_json);
}

/* ---- saving ---- */

/* The writer's view of GPU memory (sov_ckpt_options): the stall of a save is the device-to-host copy. */
static sov_status copy_from_gpu(void *dev, void *dst, const void *src, size_t bytes) {
    return sov_device_to_host(dev, dst, src, bytes);
}
static void *pinned_alloc(void *dev, size_t bytes) { return sov_device_alloc_host(dev, bytes); }
static void pinned_free(void *dev, void *ptr) { sov_device_free_host(dev, ptr); }

/* Tells `sovtrain launch` (through SOVTRAIN_STATUS_DIR) which checkpoint the job last committed. */
static void report_to_launcher(const char *path) {
    const char *dir = getenv("SOVTRAIN_STATUS_DIR");
    char tmp[4200], final[4200];
    if (!dir || !*dir)
        return;
    snprintf(tmp, sizeof tmp, "%s/last_checkpoint.tmp", dir);
    snprintf(final, sizeof final, "%s/last_checkpoint", dir);
    FILE *f = fopen(tmp, "w");
    if (f && fprintf(f, "%s\n", path) > 0 && fclose(f) == 0)
        rename(tmp, final);
    else if (f)
        fclose(f);
}

/* Waits for the save in flight; rank 0 reports where it was committed. */
static sov_status wait_saved(trainer *t) {
    char path[4200];
    sov_status st = sov_ckpt_wait(t->ckpt, path, sizeof path);
    if (st == SOV_OK && t->world.rank == 0 && path[0]) {
        sov_log("checkpoint: saved %s (durable %.2f s after the save began)", path, sov_ckpt_save_seconds(t->ckpt));
        report_to_launcher(path);
    }
    return st;
}

/* A failed save ends the job (--on-ckpt-error stop), or is reported while training goes on. */
static sov_status handle_failure(trainer *t, sov_status st) {
    if (st == SOV_OK || t->args.stop_on_ckpt_error)
        return st;
    sov_log_error("rank %d: a checkpoint failed and training goes on (--on-ckpt-error continue); the previous "
                  "checkpoint stays latest: %s", t->world.rank, sov_last_error());
    return SOV_OK;
}

static sov_status save(trainer *t, long step) {
    double w0 = sov_now();
    SOV_CHECK(handle_failure(t, wait_saved(t)));
    double waited = sov_now() - w0;
    uint64_t id = 0; /* one id for this save on every rank: rank 0's */
    if (t->world.rank == 0)
        id = (uint64_t)time(NULL) << 32 ^ (uint64_t)getpid() << 12 ^ (uint64_t)step ^ (uint64_t)(sov_now() * 1e9);
    SOV_CHECK(sov_comm_broadcast(t->comm, &id, sizeof id, SOV_U8, 0));
    json_t *m = meta(t);
    sov_ckpt_state s;
    sov_status st = fill_state(t, step, &s, m);
    json_decref(m);
    SOV_CHECK(st);
    double stall = 0;
    st = sov_ckpt_save(t->ckpt, &s, id, &stall, NULL);
    free_state(&s);
    SOV_CHECK(st);
    t->last_saved_step = step;
    t->last_save_time = sov_now();
    sov_log("checkpoint: step %ld snapshot in %.1f ms (waited %.1f ms for the previous save); writing in the "
            "background", step, stall * 1e3, waited * 1e3);
    return sov_metrics_emit(&t->metrics, json_pack("{s:s, s:I, s:f, s:f}", "event", "checkpoint", "step",
                                                   (json_int_t)step, "stall_ms", stall * 1e3, "wait_ms", waited * 1e3));
}

sov_status sov_trainer_ckpt_step(trainer *t, long done, int *stop) {
    /* The ranks agree, every step, on whether a signal arrived anywhere and whether a timed save is due. */
    double due_by_time = t->ckpt && t->args.ckpt_every_s > 0 && sov_now() - t->last_save_time >= t->args.ckpt_every_s;
    double flags[2] = {stop_signal ? 1.0 : 0.0, due_by_time ? 1.0 : 0.0};
    SOV_CHECK(sov_comm_allreduce(t->comm, flags, flags, 2, SOV_F64, SOV_MAX));
    *stop = flags[0] > 0;
    int due = (t->args.ckpt_every > 0 && done % t->args.ckpt_every == 0) || flags[1] > 0 || *stop;
    if (!t->ckpt || !due)
        return SOV_OK;
    if (t->last_saved_step != done) /* a signal at a step just saved stops on that save */
        SOV_CHECK(save(t, done));
    if (*stop) { /* preemption: the state must be on disk before we go */
        SOV_CHECK(wait_saved(t));
        sov_log("stopping at step %ld on %s: the checkpoint above holds the job's state; resume with --resume "
                "latest", done, stop_reason());
    }
    return SOV_OK;
}

sov_status sov_trainer_ckpt_finish(trainer *t) {
    if (!t->ckpt)
        return SOV_OK;
    if (t->last_saved_step != t->total_steps)
        SOV_CHECK(save(t, t->total_steps));
    return wait_saved(t); /* the final state must be saved: a failure here fails the job under either policy */
}

void sov_trainer_ckpt_close(trainer *t) {
    sov_ckpt_writer_close(t->ckpt);
    t->ckpt = NULL;
    sov_ckpt_key_free(t->key);
    t->key = NULL;
    sov_ckpt_signer_free(t->signer);
    t->signer = NULL;
}

/* ---- resuming ---- */

/* The checkpoint holds the model's tensors and the optimizer's, f32 and of this job's shapes: a checkpoint of
 * another model or optimizer is refused by name before anything is read. */
static sov_status check_shapes(sov_ckpt *c, const trainer *t, const sov_ckpt_tensor *opt, int nopt) {
    SOV_CHECK(sov_model_ckpt_check(c, t->model));
    for (int i = 0; i < nopt; i++) {
        sov_ckpt_tensor_info info;
        if (sov_ckpt_tensor_find(c, opt[i].name, &info) != SOV_OK)
            return sov_fail(SOV_ERR_INVALID, "%s has no tensor \"%s\": a checkpoint of another optimizer?",
                            sov_ckpt_path(c), opt[i].name);
        if (info.dtype != SOV_F32 || info.ndim != 1 || info.shape[0] != opt[i].shape[0])
            return sov_fail(SOV_ERR_INVALID, "%s: tensor \"%s\" is not f32 [%lld] as this job's optimizer state: a "
                            "checkpoint of another model shape?", sov_ckpt_path(c), opt[i].name,
                            (long long)opt[i].shape[0]);
    }
    return SOV_OK;
}

/* The checkpoint's tensors into the model and optimizer in one pass, through host memory when those are on a
 * GPU: the stored state is the same wherever it was computed, so a GPU job resumes a CPU job's checkpoint and the
 * other way round. The checkpoint must hold exactly the model's tensors with their shapes, and the optimizer's. */
static sov_status read_state(trainer *t, sov_ckpt *c) {
    float *dev[3] = {t->model->params, t->opt.m, t->opt.v}, *host[3] = {NULL, NULL, NULL};
    size_t counts[3] = {t->model->num_params, t->opt.count, t->opt.count};
    sov_status st = SOV_OK;
    for (int b = 0; b < 3; b++)
        if (dev[b] && !(host[b] = t->dev ? sov_aligned_alloc(counts[b] * sizeof(float)) : dev[b]))
            st = SOV_ERR_NOMEM;
    int nt = t->model->num_tensors;
    sov_ckpt_read_request *reqs = sov_calloc((size_t)nt + 2, sizeof *reqs);
    sov_ckpt_tensor opt[2];
    int no = optimizer_tensors(t, host[1], host[2], opt);
    if (st == SOV_OK && !reqs)
        st = SOV_ERR_NOMEM;
    if (st == SOV_OK) {
        sov_model_ckpt_requests(t->model, host[0], reqs);
        for (int i = 0; i < no; i++)
            reqs[nt + i] = (sov_ckpt_read_request){.name = opt[i].name, .dtype = SOV_F32, .dst = (void *)opt[i].data};
        st = check_shapes(c, t, opt, no);
    }
    if (st == SOV_OK)
        st = sov_ckpt_read_many(c, reqs, nt + no);
    for (int b = 0; b < 3; b++) {
        if (st == SOV_OK && t->dev && dev[b])
            st = sov_trainer_upload(t, dev[b], host[b], counts[b]);
        if (t->dev)
            free(host[b]);
    }
    free(reqs);
    return st;
}

/* Opens checkpoint `path` with the job's key. A key file unwraps on every rank; a key command runs once, on rank 0,
 * and the data key reaches the other ranks as a save's does (every rank calls this for the same path). */
static sov_status open_checkpoint(trainer *t, const char *path, sov_ckpt **out) {
    if (!t->key || !t->args.key_command)
        return sov_ckpt_open_key(path, t->key, out);
    enum { FAILED, PLAIN, ENCRYPTED };
    uint8_t msg[1 + 32] = {FAILED};
    sov_ckpt *c = NULL;
    sov_status st = t->world.rank == 0 ? sov_ckpt_open_key(path, t->key, &c) : SOV_OK;
    if (t->world.rank == 0 && st == SOV_OK)
        msg[0] = !sov_ckpt_key_id(c) ? PLAIN : sov_ckpt_data_key(c, msg + 1) == SOV_OK ? ENCRYPTED : FAILED;
    SOV_CHECK(sov_comm_broadcast(t->comm, msg, sizeof msg, SOV_U8, 0));
    if (t->world.rank == 0) {
        sov_ckpt_close(c); /* reopened below like everywhere else */
        if (st != SOV_OK) {
            explicit_bzero(msg, sizeof msg);
            return st;
        }
    }
    sov_ckpt_key *data_key = NULL;
    if (msg[0] == FAILED)
        st = sov_fail(SOV_ERR_INVALID, "rank %d: rank 0 could not unwrap the key of %s", t->world.rank, path);
    else if (msg[0] == ENCRYPTED)
        st = sov_ckpt_key_from_data_key(msg + 1, &data_key);
    explicit_bzero(msg, sizeof msg);
    if (st == SOV_OK)
        st = sov_ckpt_open_key(path, data_key, out);
    sov_ckpt_key_free(data_key);
    return st;
}

/* --require-signed: rank 0 checks the signature and every file's digest (reading the checkpoint once for the
 * job), and tells the other ranks (every rank calls this for the same path). */
static sov_status check_signed(trainer *t, const char *path) {
    if (!t->args.require_signed)
        return SOV_OK;
    sov_status st = t->world.rank == 0 ? sov_ckpt_verify_signature(path, t->args.require_signed) : SOV_OK;
    uint8_t ok = st == SOV_OK;
    SOV_CHECK(sov_comm_broadcast(t->comm, &ok, 1, SOV_U8, 0));
    if (st == SOV_OK && !ok)
        st = sov_fail(SOV_ERR_INVALID, "rank %d: %s is not signed by %s, or changed since (rank 0 says why)",
                      t->world.rank, path, t->args.require_signed);
    return st;
}

/* Loads checkpoint `path` into the model and optimizer, after checking it belongs to this job's shape. */
static sov_status load(trainer *t, const char *path) {
    sov_ckpt *c;
    SOV_CHECK(check_signed(t, path));
    SOV_CHECK(open_checkpoint(t, path, &c));
    if (sov_ckpt_key_id(c) && !t->key) {
        sov_status st = sov_fail(SOV_ERR_INVALID, "%s is encrypted with key id %s: give its key (--ckpt-key-file or "
                                 "--ckpt-key-command)", path, sov_ckpt_key_id(c));
        sov_ckpt_close(c);
        return st;
    }
    json_t *m = json_loads(sov_ckpt_meta_json(c), JSON_DECODE_ANY, NULL);
    const char *model = json_string_value(json_object_get(json_object_get(m, "config"), "model"));
    const char *kind = json_string_value(json_object_get(json_object_get(m, "optimizer"), "kind"));
    json_t *opt_t = json_object_get(json_object_get(m, "optimizer"), "t");
    const char *want_kind = t->opt.v ? "adamw" : "sgd";
    sov_status st = SOV_OK;
    if (!model || strcmp(model, t->args.model) != 0 || !kind || strcmp(kind, want_kind) != 0 || !json_is_integer(opt_t))
        st = sov_fail(SOV_ERR_INVALID, "%s holds a %s model with %s state; this job trains %s with %s", path,
                      model ? model : "?", kind ? kind : "?", t->args.model, want_kind);
    if (st == SOV_OK)
        st = read_state(t, c);
    if (st == SOV_OK) {
        t->start_step = sov_ckpt_step(c);
        t->opt.t = (long)json_integer_value(opt_t);
        if (t->start_step > t->total_steps)
            st = sov_fail(SOV_ERR_INVALID, "%s is at step %ld, beyond this job's %ld steps", path, t->start_step,
                          t->total_steps);
    }
    json_decref(m);
    sov_ckpt_close(c);
    return st;
}

/* Candidates, best first: PATH itself when it is a checkpoint, else DIR/latest and DIR/step-N newest first. */
static int candidates(const char *dir, char (*out)[4200], int cap) {
    char m[4300];
    int k = 0;
    snprintf(m, sizeof m, "%s/manifest.json", dir);
    if (access(m, F_OK) == 0) {
        snprintf(out[k++], 4200, "%s", dir);
        return k;
    }
    snprintf(m, sizeof m, "%s/latest", dir);
    char line[256];
    if (sov_read_line(m, line, sizeof line) && strncmp(line, "step-", 5) == 0 && !strchr(line, '/'))
        snprintf(out[k++], 4200, "%s/%s", dir, line);
    long steps[256];
    int ns = sov_ckpt_list_steps(dir, steps, 256);
    for (int i = 0; i < ns && k < cap; i++) {
        snprintf(out[k], 4200, "%s/step-%ld", dir, steps[i]);
        if (k == 0 || strcmp(out[k], out[0]) != 0)
            k++;
    }
    return k;
}

/* The ranks try the candidates together, one at a time, until one loads on every rank: a key command's data key
 * comes from rank 0 for each. */
static sov_status resume(trainer *t) {
    const char *spec = t->args.resume, *dir = strcmp(spec, "latest") == 0 || strcmp(spec, "auto") == 0 ? t->ckpt_dir : spec;
    static char cands[257][4200];
    int n = candidates(dir, cands, 257);
    double most = n;
    SOV_CHECK(sov_comm_allreduce(t->comm, &most, &most, 1, SOV_F64, SOV_MAX));
    const char *loaded = NULL;
    for (int i = 0; i < (int)most && !loaded; i++) {
        sov_status st = i < n ? load(t, cands[i])
                              : sov_fail(SOV_ERR_IO, "rank %d sees fewer checkpoints under %s", t->world.rank, dir);
        double failed = st != SOV_OK;
        if (st != SOV_OK)
            sov_log("resume: skipping %s: %s", i < n ? cands[i] : dir, sov_last_error());
        SOV_CHECK(sov_comm_allreduce(t->comm, &failed, &failed, 1, SOV_F64, SOV_MAX));
        if (failed == 0)
            loaded = cands[i];
    }
    /* Every rank searched the same files; make sure they all chose the same step. */
    double steps[2] = {loaded ? (double)t->start_step : -1.0, loaded ? -(double)t->start_step : 1.0};
    SOV_CHECK(sov_comm_allreduce(t->comm, steps, steps, 2, SOV_F64, SOV_MAX));
    if (steps[0] != -steps[1])
        return sov_fail(SOV_ERR_IO, "rank %d: ranks resumed from different checkpoints (steps %.0f and %.0f): is %s "
                        "the same directory on every host?", t->world.rank, -steps[1], steps[0], dir);
    if (!loaded) {
        if (strcmp(spec, "auto") == 0) {
            t->start_step = 0;
            sov_log("resume: no usable checkpoint under %s: starting fresh", dir);
            return SOV_OK;
        }
        return sov_fail(SOV_ERR_IO, "--resume %s: no usable checkpoint under %s", spec, dir);
    }
    sov_log("resume: continuing from %s (step %ld of %ld)", loaded, t->start_step, t->total_steps);
    return SOV_OK;
}

/* The broadcast that gives every rank a save's data key (sov_ckpt_options.share_key). */
static sov_status share_key(void *ctx, void *bytes, size_t n) {
    trainer *t = ctx;
    return sov_comm_broadcast(t->comm, bytes, n, SOV_U8, 0);
}

static sov_status open_key(trainer *t) {
    const sov_train_args *a = &t->args;
    if (a->key_file && a->key_command)
        return sov_fail(SOV_ERR_INVALID, "give --ckpt-key-file or --ckpt-key-command, not both");
    if (a->key_file)
        return sov_ckpt_key_from_file(a->key_file, &t->key);
    if (a->key_command)
        return sov_ckpt_key_from_command(a->key_command, &t->key);
    return SOV_OK;
}

sov_status sov_trainer_ckpt_init(trainer *t) {
    t->last_save_time = sov_now();
    SOV_CHECK(open_key(t)); /* a bad key is refused even when nothing is saved */
    if (!enabled(t))
        return SOV_OK;
    if (t->args.ckpt_dir)
        snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s", t->args.ckpt_dir);
    else
        snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/checkpoints", t->args.run_dir);
    sov_ckpt_options o = {.keep = t->args.keep, .threads = t->args.ckpt_threads,
                          .chunk_bytes = SOV_CKPT_DEFAULT_CHUNK_BYTES, .commit_timeout_s = t->args.comm_timeout};
    if (t->dev) { /* state on the GPU: snapshot through pinned host memory */
        o.copy_to_host = copy_from_gpu;
        o.alloc_host = pinned_alloc;
        o.free_host = pinned_free;
        o.memory_ctx = t->dev;
    }
    if (t->key) {
        o.key = t->key;
        o.share_key = share_key;
        o.share_ctx = t;
    }
    o.sign = t->args.sign_key != NULL;
    if (o.sign && t->world.rank == 0) /* the private key is needed where the commit runs only */
        SOV_CHECK(sov_ckpt_signer_from_pem(t->args.sign_key, &t->signer));
    o.signer = t->signer;
    SOV_CHECK(sov_ckpt_writer_open(&t->ckpt, t->ckpt_dir, t->world.rank, t->world.size, &o));
    if (t->dev) { /* pinned staging now, not in the first save's stall */
        json_t *m = meta(t);
        sov_ckpt_state s;
        sov_status st = fill_state(t, 0, &s, m);
        json_decref(m);
        if (st == SOV_OK) {
            st = sov_ckpt_writer_reserve(t->ckpt, &s);
            free_state(&s);
        }
        SOV_CHECK(st);
    }
    if (t->args.resume)
        SOV_CHECK(resume(t));
    t->last_saved_step = t->start_step > 0 ? t->start_step : -1;
    return SOV_OK;
}
