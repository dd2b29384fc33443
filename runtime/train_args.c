/* train_args.c: `sovtrain train` flags. Every value is parsed strictly: "12x" or an out-of-range number is an
 * error that names the flag, never a silent default. */
#include "train_args.h"
#include "data.h"
#include "registry.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the trainer feeds a model of this kind. */
static const char *kind_summary(sov_model_kind kind) {
    return kind == SOV_MODEL_LANGUAGE ? "a byte-level language model, on text" : "a classifier, on Fashion-MNIST";
}

/* One line per setting, "--NAME VALUE" padded to the help column (or alone on its line when too wide). */
static void usage_setting(FILE *out, const sov_model_ops *ops, const sov_model_setting *s) {
    char flag[128];
    int n = snprintf(flag, sizeof flag, "--%s %s", s->name, s->value_name);
    if (n < 0 || n > 21)
        fprintf(out, "  %s\n%24s", flag, "");
    else
        fprintf(out, "  %-21s ", flag);
    fprintf(out, "%s: %s (default %s)\n", ops->name, s->help, s->default_value);
}

/* The built-in models, then each one's settings, from the registry. */
static void usage_models(FILE *out) {
    for (int i = 0; sov_model_builtin(i); i++)
        fprintf(out, "                          %-7s %s\n", sov_model_builtin(i)->name,
                kind_summary(sov_model_builtin(i)->kind));
    for (int i = 0; sov_model_builtin(i); i++)
        for (int j = 0; j < sov_model_builtin(i)->num_settings; j++)
            usage_setting(out, sov_model_builtin(i), &sov_model_builtin(i)->settings[j]);
}

void sov_train_usage(FILE *out) {
    fprintf(out,
            "usage: sovtrain train [options]\n"
            "One rank of a data-parallel training job (runs alone as a single rank, or under `sovtrain launch`).\n"
            "\n"
            "model and data:\n"
            "  --model NAME          built-in model (default mlp):\n");
    usage_models(out);
    char cuda_models[256];
    sov_model_names(sov_model_has_cuda, cuda_models, sizeof cuda_models);
    if (!cuda_models[0])
        snprintf(cuda_models, sizeof cuda_models, "none in this build");
    fprintf(out,
            "  --data PATH           a classifier: directory of Fashion-MNIST IDX files (default\n"
            "                        /usr/share/datasets/fashion-mnist); a language model: a text file, or a directory\n"
            "                        whose *.u8 files (else all files) are concatenated, 95 %% train / 5 %% validation\n"
            "                        (default /usr/share/games/fortunes)\n"
            "  --seed N              seed for initialisation and data order (default 1)\n"
            "  --init-from FILE      start from the parameters in a safetensors file (e.g. `sovtrain ckpt export`)\n"
            "training:\n"
            "  --batch N             GLOBAL batch size (samples; sequences for a language model), split evenly over\n"
            "                        the ranks (default 128)\n"
            "  --epochs N            passes over the training set (default 10)\n"
            "  --steps N             total optimizer steps (overrides --epochs)\n"
            "  --optimizer adamw|sgd (default adamw)\n"
            "  --lr X                peak learning rate (default 1e-3)\n"
            "  --warmup-steps N      linear warmup steps before cosine decay (default 100)\n"
            "  --min-lr-ratio X      final LR as a fraction of the peak (default 0.01)\n"
            "  --weight-decay X      decoupled (AdamW) or L2 (SGD) decay of weight matrices (default 0.01)\n"
            "  --momentum X          SGD momentum (default 0.9)\n"
            "  --beta1 X --beta2 X   AdamW moment decay rates (default 0.9, 0.999)\n"
            "  --clip-grad X         clip the global gradient norm to X; 0 disables (default 0)\n"
            "runtime:\n"
            "  --device cpu|cuda|auto\n"
            "                        where the model computes (default auto, or $SOVTRAIN_DEVICE): auto picks cuda\n"
            "                        when every rank on this host gets a GPU of its own and the model has a CUDA\n"
            "                        implementation (%s), else cpu; cuda fails with the reason when it cannot\n"
            "  --precision f32|bf16  bf16: matrix products on bf16 copies of weights and activations, accumulated\n"
            "                        in f32, with f32 master weights, gradients and optimizer state (GPU only;\n"
            "                        default f32)\n"
            "  --comm NAME           collectives backend: auto, self, shm, mpi, hier, nccl, tcp (default auto, or\n"
            "                        $SOVTRAIN_COMM): auto picks nccl for GPU jobs, shm on one host, hier across\n"
            "                        hosts, tcp for ranks started without mpirun (RANK, WORLD_SIZE, MASTER_ADDR)\n"
            "  --comm-timeout S      a collective not complete after S seconds ends the job, naming the ranks\n"
            "                        that never arrived (default 300)\n"
            "  --bucket-cap-mb X     gradient buckets of X MiB all-reduced while backward runs (first one\n"
            "                        ~1 MiB); 0 = one allreduce after backward (default 25)\n"
            "  --threads N           OpenBLAS threads per rank (default: cores / ranks on this host)\n"
            "checkpoints:\n"
            "  --ckpt-dir DIR        where checkpoints go (default RUN_DIR/checkpoints)\n"
            "  --ckpt-every N        save every N steps, and at the end (default 0: off)\n"
            "  --ckpt-every-s S      save every S seconds of training (default 0: off)\n"
            "  --keep K              keep the newest K checkpoints (default 3)\n"
            "  --ckpt-threads N      compression threads per rank (default 2)\n"
            "  --resume WHAT         latest: the newest checkpoint that verifies, falling back to older ones; auto: the\n"
            "                        same, or start fresh when there is none; or a checkpoint directory\n"
            "                        (default $SOVTRAIN_RESUME, which `sovtrain launch` sets to auto on restarts)\n"
            "  --on-ckpt-error X     stop (default): a failed save ends the job; continue: it is reported, training goes on\n"
            "  --ckpt-key-file PATH  encrypt checkpoints (AES-256-GCM) under a data key wrapped by this 32-byte key,\n"
            "                        and read them with it; the file must be readable by its owner only\n"
            "  --ckpt-key-command CMD\n"
            "                        the same, with a command that wraps and unwraps the data keys (Vault transit, an\n"
            "                        HSM, a KMS; docs/security.md)\n"
            "  --ckpt-sign-key PEM   sign each checkpoint (model.sig, the OpenSSF model signing format) with this\n"
            "                        ECDSA private key (P-256/384/521), read on rank 0 only\n"
            "  --require-signed PEM  resume only from checkpoints that this public key signed, every file unchanged\n"
            "  --stop-exit-code N    exit status after a signal's clean stop (default 0; a Kubernetes indexed Job\n"
            "                        uses 143, so that its pods count as interrupted rather than done)\n"
            "  SIGTERM, SIGINT or SIGUSR1: every rank finishes its step, a checkpoint is written, the job exits 0\n"
            "  (or --stop-exit-code).\n"
            "output:\n"
            "  --run-dir DIR         metrics.jsonl goes here (default runs/train)\n"
            "  --eval-every N        evaluate on the test set every N steps (default: every epoch) and at the end\n"
            "  --log-every N         progress line every N steps (default 50)\n"
            "  --dump-params FILE    rank 0 writes the final parameters as raw little-endian f32\n"
            "  -h, --help            this text\n", cuda_models);
}

static sov_status parse_double(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return sov_fail(SOV_ERR_INVALID, "%s \"%s\": expected a number in %g..%g", flag, s, lo, hi);
    *out = v;
    return SOV_OK;
}

static sov_status parse_float(const char *flag, const char *s, double lo, double hi, float *out) {
    double v = 0.0;
    SOV_CHECK(parse_double(flag, s, lo, hi, &v));
    *out = (float)v;
    return SOV_OK;
}

static void set_defaults(sov_train_args *a) {
    *a = (sov_train_args){
        .model = "mlp", .run_dir = "runs/train", .epochs = 10, .comm_timeout = 300.0, .bucket_cap_mb = 25.0,
        .keep = 3, .ckpt_threads = 2, .stop_on_ckpt_error = 1, .batch = 128, .seed = 1, .log_every = 50,
        .optim = {.kind = SOV_OPTIM_ADAMW, .lr = 1e-3f, .momentum = 0.9f, .beta1 = 0.9f, .beta2 = 0.999f,
                  .eps = 1e-8f, .weight_decay = 0.01f, .warmup_steps = 100, .min_lr_ratio = 0.01f},
    };
}

enum {
    OPT_MODEL = 256, OPT_DATA, OPT_SEED, OPT_BATCH, OPT_EPOCHS, OPT_STEPS, OPT_OPTIMIZER, OPT_LR,
    OPT_WARMUP, OPT_MINLR, OPT_WD, OPT_MOMENTUM, OPT_BETA1, OPT_BETA2, OPT_CLIP, OPT_COMM, OPT_THREADS,
    OPT_RUNDIR, OPT_EVAL, OPT_LOG, OPT_DUMP, OPT_COMM_TIMEOUT, OPT_BUCKET, OPT_CKPT_DIR, OPT_CKPT_EVERY, OPT_CKPT_EVERY_S, OPT_KEEP, OPT_CKPT_THREADS,
    OPT_RESUME, OPT_ON_CKPT_ERROR, OPT_INIT_FROM, OPT_DEVICE, OPT_PRECISION, OPT_STOP_EXIT,
    OPT_KEY_FILE, OPT_KEY_COMMAND, OPT_SIGN_KEY, OPT_REQUIRE_SIGNED,
    OPT_SETTING /* + k: the k-th distinct name among the models' settings */
};

/* The trainer's own flags; the models' settings follow them in the table that parsing builds. */
static const struct option trainer_opts[] = {
    {"model", required_argument, 0, OPT_MODEL}, {"data", required_argument, 0, OPT_DATA},
    {"seed", required_argument, 0, OPT_SEED}, {"batch", required_argument, 0, OPT_BATCH},
    {"epochs", required_argument, 0, OPT_EPOCHS}, {"steps", required_argument, 0, OPT_STEPS},
    {"optimizer", required_argument, 0, OPT_OPTIMIZER},
    {"lr", required_argument, 0, OPT_LR}, {"warmup-steps", required_argument, 0, OPT_WARMUP},
    {"min-lr-ratio", required_argument, 0, OPT_MINLR}, {"weight-decay", required_argument, 0, OPT_WD},
    {"momentum", required_argument, 0, OPT_MOMENTUM}, {"beta1", required_argument, 0, OPT_BETA1},
    {"beta2", required_argument, 0, OPT_BETA2}, {"clip-grad", required_argument, 0, OPT_CLIP},
    {"comm", required_argument, 0, OPT_COMM}, {"threads", required_argument, 0, OPT_THREADS},
    {"run-dir", required_argument, 0, OPT_RUNDIR}, {"eval-every", required_argument, 0, OPT_EVAL},
    {"log-every", required_argument, 0, OPT_LOG}, {"dump-params", required_argument, 0, OPT_DUMP},
    {"comm-timeout", required_argument, 0, OPT_COMM_TIMEOUT}, {"bucket-cap-mb", required_argument, 0, OPT_BUCKET},
    {"ckpt-dir", required_argument, 0, OPT_CKPT_DIR}, {"ckpt-every", required_argument, 0, OPT_CKPT_EVERY},
    {"ckpt-every-s", required_argument, 0, OPT_CKPT_EVERY_S}, {"keep", required_argument, 0, OPT_KEEP},
    {"ckpt-threads", required_argument, 0, OPT_CKPT_THREADS}, {"resume", required_argument, 0, OPT_RESUME},
    {"on-ckpt-error", required_argument, 0, OPT_ON_CKPT_ERROR}, {"init-from", required_argument, 0, OPT_INIT_FROM},
    {"device", required_argument, 0, OPT_DEVICE}, {"precision", required_argument, 0, OPT_PRECISION},
    {"stop-exit-code", required_argument, 0, OPT_STOP_EXIT}, {"ckpt-key-file", required_argument, 0, OPT_KEY_FILE},
    {"ckpt-key-command", required_argument, 0, OPT_KEY_COMMAND}, {"ckpt-sign-key", required_argument, 0, OPT_SIGN_KEY},
    {"require-signed", required_argument, 0, OPT_REQUIRE_SIGNED}, {"help", no_argument, 0, 'h'},
};
#define NUM_TRAINER_OPTS (int)(sizeof trainer_opts / sizeof *trainer_opts)

static sov_status apply(int opt, const char *v, sov_train_args *a) {
    long n;
    switch (opt) {
    case OPT_MODEL: a->model = v; return SOV_OK;
    case OPT_DATA: a->data_dir = v; return SOV_OK;
    case OPT_RUNDIR: a->run_dir = v; return SOV_OK;
    case OPT_DUMP: a->dump_params = v; return SOV_OK;
    case OPT_SEED: SOV_CHECK(sov_parse_long("--seed", v, 0, 0x7fffffffffffffffL, &n)); a->seed = (uint64_t)n; return SOV_OK;
    case OPT_BATCH: SOV_CHECK(sov_parse_long("--batch", v, 1, 1 << 20, &n)); a->batch = (int)n; return SOV_OK;
    case OPT_EPOCHS: return sov_parse_long("--epochs", v, 1, 1000000, &a->epochs);
    case OPT_STEPS: return sov_parse_long("--steps", v, 1, 1L << 40, &a->steps);
    case OPT_EVAL: return sov_parse_long("--eval-every", v, 0, 1L << 40, &a->eval_every);
    case OPT_LOG: return sov_parse_long("--log-every", v, 1, 1L << 40, &a->log_every);
    case OPT_THREADS: SOV_CHECK(sov_parse_long("--threads", v, 1, 1024, &n)); a->threads = (int)n; return SOV_OK;
    case OPT_WARMUP: return sov_parse_long("--warmup-steps", v, 0, 1L << 40, &a->optim.warmup_steps);
    case OPT_LR: return parse_float("--lr", v, 0.0, 10.0, &a->optim.lr);
    case OPT_MINLR: return parse_float("--min-lr-ratio", v, 0.0, 1.0, &a->optim.min_lr_ratio);
    case OPT_WD: return parse_float("--weight-decay", v, 0.0, 10.0, &a->optim.weight_decay);
    case OPT_MOMENTUM: return parse_float("--momentum", v, 0.0, 0.9999, &a->optim.momentum);
    case OPT_BETA1: return parse_float("--beta1", v, 0.0, 0.9999, &a->optim.beta1);
    case OPT_BETA2: return parse_float("--beta2", v, 0.0, 0.999999, &a->optim.beta2);
    case OPT_CLIP: return parse_float("--clip-grad", v, 0.0, 1e9, &a->optim.clip_norm);
    case OPT_COMM: return sov_comm_backend_parse(v, &a->comm);
    case OPT_DEVICE: return sov_device_kind_parse(v, &a->device);
    case OPT_STOP_EXIT:
        SOV_CHECK(sov_parse_long("--stop-exit-code", v, 0, 255, &n));
        a->stop_exit_code = (int)n;
        return SOV_OK;
    case OPT_PRECISION:
        if (strcmp(v, "f32") != 0 && strcmp(v, "bf16") != 0)
            return sov_fail(SOV_ERR_INVALID, "--precision \"%s\": choose f32 or bf16", v);
        a->bf16 = strcmp(v, "bf16") == 0;
        return SOV_OK;
    case OPT_CKPT_DIR: a->ckpt_dir = v; return SOV_OK;
    case OPT_RESUME: a->resume = v; return SOV_OK;
    case OPT_INIT_FROM: a->init_from = v; return SOV_OK;
    case OPT_KEY_FILE: a->key_file = v; return SOV_OK;
    case OPT_KEY_COMMAND: a->key_command = v; return SOV_OK;
    case OPT_SIGN_KEY: a->sign_key = v; return SOV_OK;
    case OPT_REQUIRE_SIGNED: a->require_signed = v; return SOV_OK;
    case OPT_CKPT_EVERY: return sov_parse_long("--ckpt-every", v, 0, 1L << 40, &a->ckpt_every);
    case OPT_KEEP: SOV_CHECK(sov_parse_long("--keep", v, 1, 1000000, &n)); a->keep = (int)n; return SOV_OK;
    case OPT_CKPT_THREADS: SOV_CHECK(sov_parse_long("--ckpt-threads", v, 1, 16, &n)); a->ckpt_threads = (int)n; return SOV_OK;
    case OPT_CKPT_EVERY_S: return parse_double("--ckpt-every-s", v, 0.0, 1e9, &a->ckpt_every_s);
    case OPT_ON_CKPT_ERROR:
        if (strcmp(v, "stop") != 0 && strcmp(v, "continue") != 0)
            return sov_fail(SOV_ERR_INVALID, "--on-ckpt-error \"%s\": choose stop or continue", v);
        a->stop_on_ckpt_error = strcmp(v, "stop") == 0;
        return SOV_OK;
    case OPT_BUCKET: return parse_double("--bucket-cap-mb", v, 0.0, 1e6, &a->bucket_cap_mb);
    case OPT_COMM_TIMEOUT: return parse_double("--comm-timeout", v, 0.001, 1e7, &a->comm_timeout);
    case OPT_OPTIMIZER:
        if (strcmp(v, "adamw") == 0)
            a->optim.kind = SOV_OPTIM_ADAMW;
        else if (strcmp(v, "sgd") == 0)
            a->optim.kind = SOV_OPTIM_SGD;
        else
            return sov_fail(SOV_ERR_INVALID, "--optimizer \"%s\": choose adamw or sgd", v);
        return SOV_OK;
    }
    return sov_fail(SOV_ERR_INTERNAL, "unhandled option %d", opt);
}

/* The flags of every built-in model's settings, after the trainer's own: one per distinct name (two models may
 * share one), and the value the command line gave each. */
typedef struct setting_flags {
    struct option *table; /* trainer_opts, then flag k as OPT_SETTING + k, then the terminator */
    const char **given;   /* given[k]: flag k's value on the command line, or NULL */
    int count;
} setting_flags;

static const char *setting_flag_name(const setting_flags *f, int k) { return f->table[NUM_TRAINER_OPTS + k].name; }

static int find_option(const struct option *table, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0)
            return i;
    return -1;
}

/* A checkpoint's meta.config holds the model's settings beside these keys of the job (train_ckpt.c). */
static const char *const job_config_keys[] = {"num_params", "global_batch", "total_steps", "vocab"};

static sov_status add_setting_flag(setting_flags *f, const sov_model_ops *ops, const char *name) {
    int at = find_option(f->table, NUM_TRAINER_OPTS + f->count, name);
    int taken = at >= 0 && at < NUM_TRAINER_OPTS;
    for (size_t i = 0; i < sizeof job_config_keys / sizeof *job_config_keys; i++)
        taken |= strcmp(job_config_keys[i], name) == 0;
    if (taken)
        return sov_fail(SOV_ERR_INTERNAL, "the %s model's setting \"%s\" is also a flag of sovtrain train or a key of "
                        "a checkpoint's meta.config: rename the setting", ops->name, name);
    if (at < 0) {
        f->table[NUM_TRAINER_OPTS + f->count] = (struct option){name, required_argument, 0, OPT_SETTING + f->count};
        f->count++;
    }
    return SOV_OK;
}

/* The option table for getopt_long: the trainer's flags and every built-in model's settings (free the arrays). */
static sov_status build_setting_flags(setting_flags *f) {
    size_t total = 0;
    for (int i = 0; sov_model_builtin(i); i++)
        total += (size_t)sov_model_builtin(i)->num_settings;
    *f = (setting_flags){.table = sov_calloc(NUM_TRAINER_OPTS + total + 1, sizeof *f->table),
                         .given = sov_calloc(total + 1, sizeof *f->given)};
    if (!f->table || !f->given)
        return SOV_ERR_NOMEM;
    memcpy(f->table, trainer_opts, sizeof trainer_opts);
    for (int i = 0; sov_model_builtin(i); i++) {
        const sov_model_ops *ops = sov_model_builtin(i);
        for (int j = 0; j < ops->num_settings; j++)
            SOV_CHECK(add_setting_flag(f, ops, ops->settings[j].name));
    }
    return SOV_OK;
}

static int setting_index(const sov_model_ops *ops, const char *name) {
    for (int j = 0; j < ops->num_settings; j++)
        if (strcmp(ops->settings[j].name, name) == 0)
            return j;
    return -1;
}

/* A setting flag that the chosen model lacks: which models have it. */
static sov_status foreign_setting(const char *name, const sov_train_args *a) {
    char owners[256] = "";
    size_t len = 0;
    int count = 0;
    for (int i = 0; sov_model_builtin(i) && len < sizeof owners; i++)
        if (setting_index(sov_model_builtin(i), name) >= 0) {
            len += (size_t)snprintf(owners + len, sizeof owners - len, "%s%s", count ? " or " : "",
                                    sov_model_builtin(i)->name);
            count++;
        }
    return sov_fail(SOV_ERR_INVALID, "--%s is a setting of the %s model%s, not of %s (--model %s): drop --%s, or "
                    "choose --model %s", name, owners, count > 1 ? "s" : "", a->model, a->model, name, owners);
}

/* The chosen model's settings: as the command line gave them, else the defaults of its table. */
static sov_status resolve_settings(const setting_flags *f, sov_train_args *a) {
    const sov_model_ops *ops = a->ops;
    if (ops->num_settings > SOV_TRAIN_MAX_SETTINGS)
        return sov_fail(SOV_ERR_INTERNAL, "the %s model has %d settings; sovtrain train takes at most %d", ops->name,
                        ops->num_settings, SOV_TRAIN_MAX_SETTINGS);
    for (int j = 0; j < ops->num_settings; j++)
        a->settings[j] = ops->settings[j].default_value;
    for (int k = 0; k < f->count; k++) {
        if (!f->given[k])
            continue;
        int j = setting_index(ops, setting_flag_name(f, k));
        if (j < 0)
            return foreign_setting(setting_flag_name(f, k), a);
        a->settings[j] = f->given[k];
    }
    return SOV_OK;
}

static sov_status parse_flags(int argc, char **argv, setting_flags *f, sov_train_args *a) {
    optind = 1;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", f->table, NULL)) != -1) {
        if (opt == 'h') {
            a->help = 1;
            return SOV_OK;
        }
        if (opt == '?')
            return sov_fail(SOV_ERR_INVALID, "unknown option \"%s\"", argv[optind - 1]);
        if (opt == ':')
            return sov_fail(SOV_ERR_INVALID, "option \"%s\" needs a value", argv[optind - 1]);
        if (opt >= OPT_SETTING)
            f->given[opt - OPT_SETTING] = optarg;
        else
            SOV_CHECK(apply(opt, optarg, a));
    }
    if (optind < argc)
        return sov_fail(SOV_ERR_INVALID, "unexpected argument \"%s\"", argv[optind]);
    return SOV_OK;
}

/* The model --model names, with its settings. */
static sov_status choose_model(const setting_flags *f, sov_train_args *a) {
    if (!(a->ops = sov_model_find(a->model))) {
        char names[256];
        sov_model_names(NULL, names, sizeof names);
        return sov_fail(SOV_ERR_INVALID, "unknown model \"%s\" (built-in: %s)", a->model, names);
    }
    SOV_CHECK(resolve_settings(f, a));
    if (!a->data_dir)
        a->data_dir = a->ops->kind == SOV_MODEL_LANGUAGE ? SOV_FORTUNES_DIR : SOV_FASHION_MNIST_DIR;
    return SOV_OK;
}

sov_status sov_train_args_parse(int argc, char **argv, sov_train_args *a) {
    set_defaults(a);
    const char *env = getenv("SOVTRAIN_COMM");
    if (env && *env)
        SOV_CHECK(sov_comm_backend_parse(env, &a->comm));
    env = getenv("SOVTRAIN_DEVICE");
    if (env && *env)
        SOV_CHECK(sov_device_kind_parse(env, &a->device));
    env = getenv("SOVTRAIN_RESUME"); /* set by `sovtrain launch` when it restarts a failed job */
    if (env && *env)
        a->resume = env;
    setting_flags f;
    sov_status st = build_setting_flags(&f);
    if (st == SOV_OK)
        st = parse_flags(argc, argv, &f, a);
    if (st == SOV_OK && !a->help)
        st = choose_model(&f, a);
    free(f.table);
    free(f.given);
    return st;
}
