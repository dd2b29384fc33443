/* bigram.c: a training program of a user's own on libsovtrain: a byte-level bigram language model (a 256 x 256
 * table of logits: the next byte given this one), trained data-parallel on the fortunes text with sovtrain's
 * world, collectives and checkpoints. It is built against the installed library with pkg-config alone (Makefile)
 * and runs under `sovtrain launch`, which restarts it after a failure with SOVTRAIN_RESUME=auto:
 *
 *   sovtrain launch -np 2 --max-restarts 2 -- ./bigram --ckpt-dir ckpt --out weights.bin
 *
 * Every rank takes its share of each global batch (positions drawn from the step number alone, so the batch is
 * the same at any world size), the gradients are summed over the ranks, and the ranks take the same SGD step with
 * momentum. Checkpoints hold the weights, the momentum and the step: a restarted job continues bit for bit. */
#include <sovtrain/ckpt.h>
#include <sovtrain/comm.h>
#include <sovtrain/sov.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define V 256 /* the vocabulary: bytes */

typedef struct options {
    const char *data, *ckpt_dir, *out;
    long steps, ckpt_every;
    int batch; /* global: positions per step over all ranks */
    float lr, momentum;
} options;

typedef struct job {
    options opt;
    sov_world world;
    sov_comm *comm;
    unsigned char *text;
    size_t len;
    float *weights, *momentum, *grads; /* V x V each; grads from the communicator's memory (no copies) */
    int64_t step;
    sov_ckpt_writer *writer;
} job;

static int usage(void) {
    fprintf(stderr, "usage: bigram [--data FILE] [--steps N] [--batch N] [--lr X] [--ckpt-dir DIR] "
                    "[--ckpt-every N] [--out FILE]\n");
    return 2;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){.data = "/usr/share/games/fortunes/fortunes", .steps = 3000, .batch = 256, .lr = 0.5f,
                   .momentum = 0.9f, .ckpt_every = 500};
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return usage();
        if (!strcmp(k, "--data")) o->data = v;
        else if (!strcmp(k, "--steps")) o->steps = atol(v);
        else if (!strcmp(k, "--batch")) o->batch = atoi(v);
        else if (!strcmp(k, "--lr")) o->lr = (float)atof(v);
        else if (!strcmp(k, "--ckpt-dir")) o->ckpt_dir = v;
        else if (!strcmp(k, "--ckpt-every")) o->ckpt_every = atol(v);
        else if (!strcmp(k, "--out")) o->out = v;
        else return usage();
    }
    return o->steps > 0 && o->batch > 0 && o->ckpt_every > 0 ? 0 : usage();
}

static int die(job *j, const char *what) {
    sov_log_error("bigram: %s: %s", what, sov_last_error());
    sov_comm_abort(j->comm, 1); /* no rank waits forever for this one */
    return 1;
}

static sov_status read_text(job *j) {
    FILE *f = fopen(j->opt.data, "rb");
    if (!f)
        return sov_fail(SOV_ERR_IO, "cannot open %s", j->opt.data);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    j->text = n > 1 ? malloc((size_t)n) : NULL;
    j->len = j->text ? fread(j->text, 1, (size_t)n, f) : 0;
    fclose(f);
    return j->len > 1 ? SOV_OK : sov_fail(SOV_ERR_IO, "%s is empty or unreadable", j->opt.data);
}

/* Where position g of step s's global batch starts: a pure function of (s, g). */
static size_t position(const job *j, int64_t s, int g) {
    uint64_t x = (uint64_t)s * 0x9e3779b97f4a7c15ull ^ (uint64_t)g * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 29;
    return (size_t)(x % (j->len - 1));
}

/* This rank's share of the step's batch into grads (summed, not averaged); its summed loss. */
static double forward_backward(job *j) {
    int g0 = (int)((int64_t)j->opt.batch * j->world.rank / j->world.size);
    int g1 = (int)((int64_t)j->opt.batch * (j->world.rank + 1) / j->world.size);
    double loss = 0;
    memset(j->grads, 0, sizeof(float) * V * V);
    for (int g = g0; g < g1; g++) {
        size_t p = position(j, j->step, g);
        const float *row = j->weights + (size_t)j->text[p] * V;
        float *grow = j->grads + (size_t)j->text[p] * V, max = row[0], sum = 0;
        for (int k = 1; k < V; k++)
            max = row[k] > max ? row[k] : max;
        for (int k = 0; k < V; k++)
            sum += expf(row[k] - max);
        for (int k = 0; k < V; k++)
            grow[k] += expf(row[k] - max) / sum;
        grow[j->text[p + 1]] -= 1.0f;
        loss += log(sum) + max - row[j->text[p + 1]];
    }
    return loss;
}

static sov_status train_step(job *j, double *loss) {
    double l = forward_backward(j);
    SOV_CHECK(sov_comm_allreduce(j->comm, j->grads, j->grads, V * V, SOV_F32, SOV_SUM));
    SOV_CHECK(sov_comm_allreduce(j->comm, &l, &l, 1, SOV_F64, SOV_SUM));
    for (int i = 0; i < V * V; i++) {
        j->momentum[i] = j->opt.momentum * j->momentum[i] + j->grads[i] / (float)j->opt.batch;
        j->weights[i] -= j->opt.lr * j->momentum[i];
    }
    *loss = l / j->opt.batch;
    return SOV_OK;
}

/* ---- checkpoints ---- */

static void state_of(job *j, sov_ckpt_tensor t[3]) {
    t[0] = (sov_ckpt_tensor){.name = "bigram.weight", .dtype = SOV_F32, .ndim = 2, .shape = {V, V},
                             .data = j->weights};
    t[1] = (sov_ckpt_tensor){.name = "sgd.momentum", .dtype = SOV_F32, .ndim = 2, .shape = {V, V},
                             .data = j->momentum};
    t[2] = (sov_ckpt_tensor){.name = "step", .dtype = SOV_I64, .ndim = 0, .data = &j->step};
}

/* Saves the state at j->step, in the background. The previous save must be over on every rank before a new one
 * starts: waiting for it, then a broadcast of the new save's id from rank 0, is that barrier. */
static sov_status save(job *j) {
    SOV_CHECK(sov_ckpt_wait(j->writer, NULL, 0));
    uint64_t id = (uint64_t)j->step + 1;
    SOV_CHECK(sov_comm_broadcast(j->comm, &id, sizeof id, SOV_U8, 0));
    sov_ckpt_tensor t[3];
    state_of(j, t);
    char meta[160];
    snprintf(meta, sizeof meta, "{\"model\": \"bigram\", \"batch\": %d, \"lr\": %g, \"momentum\": %g}", j->opt.batch,
             (double)j->opt.lr, (double)j->opt.momentum);
    sov_ckpt_state s = {.step = (long)j->step, .num_tensors = 3, .tensors = t, .meta_json = meta};
    return sov_ckpt_save(j->writer, &s, id, NULL, NULL);
}

/* After a restart (SOVTRAIN_RESUME, set by `sovtrain launch`), the newest checkpoint that verifies, if any. */
static sov_status resume(job *j) {
    const char *how = getenv("SOVTRAIN_RESUME");
    char path[4096];
    if (!how || !*how || sov_ckpt_find(j->opt.ckpt_dir, path, sizeof path, NULL, NULL) != SOV_OK)
        return SOV_OK; /* a fresh start */
    sov_ckpt *c;
    SOV_CHECK(sov_ckpt_open(path, &c));
    sov_ckpt_tensor t[3];
    state_of(j, t);
    sov_ckpt_read_request r[3];
    for (int i = 0; i < 3; i++)
        r[i] = (sov_ckpt_read_request){.name = t[i].name, .dtype = t[i].dtype, .dst = (void *)t[i].data};
    sov_status st = sov_ckpt_read_many(c, r, 3);
    sov_ckpt_close(c);
    if (st == SOV_OK)
        sov_log("bigram: resumed from %s (step %lld)", path, (long long)j->step);
    return st;
}

static int finish(job *j) {
    if (j->writer && (save(j) != SOV_OK || sov_ckpt_wait(j->writer, NULL, 0) != SOV_OK))
        return die(j, "the final checkpoint");
    if (j->world.rank == 0 && j->opt.out) {
        FILE *f = fopen(j->opt.out, "wb");
        if (!f || fwrite(j->weights, sizeof(float), V * V, f) != V * V || fclose(f) != 0)
            return die(j, "writing --out");
    }
    return 0;
}

static int run(job *j) {
    if (read_text(j) != SOV_OK)
        return die(j, "data");
    j->weights = calloc(V * V, sizeof(float));
    j->momentum = calloc(V * V, sizeof(float));
    if (!(j->grads = sov_comm_alloc(j->comm, V * V * sizeof(float))) || !j->weights || !j->momentum)
        return die(j, "memory");
    if (j->opt.ckpt_dir) {
        sov_ckpt_options o = {.keep = 2, .threads = 1};
        if (sov_ckpt_writer_open(&j->writer, j->opt.ckpt_dir, j->world.rank, j->world.size, &o) != SOV_OK ||
            resume(j) != SOV_OK)
            return die(j, "checkpoints");
    }
    for (double loss; j->step < j->opt.steps;) {
        if (train_step(j, &loss) != SOV_OK)
            return die(j, "training step");
        j->step++;
        if (j->step % 500 == 0)
            sov_log("bigram: step %lld loss %.4f nats/byte", (long long)j->step, loss);
        if (j->writer && j->step % j->opt.ckpt_every == 0 && j->step < j->opt.steps && save(j) != SOV_OK)
            return die(j, "checkpoint");
    }
    return finish(j);
}

int main(int argc, char **argv) {
    job j = {0};
    if (parse(argc, argv, &j.opt) != 0)
        return 2;
    sov_comm_config cfg = {.backend = SOV_COMM_AUTO};
    if (sov_world_from_env(&j.world) != SOV_OK || sov_comm_init(&j.comm, &j.world, &cfg) != SOV_OK) {
        fprintf(stderr, "bigram: %s\n", sov_last_error());
        return 1;
    }
    sov_log_set_rank(j.world.rank, j.world.size);
    int rc = run(&j);
    sov_ckpt_writer_close(j.writer);
    sov_comm_free(j.comm, j.grads);
    sov_comm_destroy(j.comm);
    free(j.weights), free(j.momentum), free(j.text);
    return rc;
}
