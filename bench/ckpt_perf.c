/* ckpt_perf: checkpoint save/restore speed and compression beside their bounds and peers, in one run.
 *
 * Cases: (a) a trained MLP's real state (params + AdamW moments, read from a checkpoint given with --from),
 * (b) a synthetic f32 state (Gaussian, sigma 0.02; --mib, default 512), (c) the bf16 cast of (b), (d) a state of
 * many tensors shaped like GPT-2 124M with its AdamW moments (148 parameter tensors, 444 in all; --gpt2 WIDTH,
 * default 768, sets the width: smaller for a quick run, 0 leaves it out), and (e) its bf16 cast.
 * For each: sovtrain's save (snapshot + compression + writes + fsync + commit: from the call until the checkpoint
 * is durable and latest; one rank, --threads compression threads) in GB/s of raw state, the training stall (the
 * snapshot), restore GB/s (open + decode + verify, from the disk: the files are dropped from the page cache first),
 * the ratio; and, on the same bytes: the order-0 entropy bound of the transformed byte planes, plain zstd -1 on the
 * raw bytes, the disk's sequential write bandwidth with fsync (the better of buffered and O_DIRECT writes), one
 * memcpy of the state, and the cores the process kept busy during the best save (CPU time / its time; against the
 * cores it may use it tells a save bound by the CPU from one that waited on the disk). With --peer SCRIPT
 * (bench/peers/torch_ckpt.py), torch.save and torch.load of the same bytes too. Every timed figure is taken in tries
 * that alternate with the others' (the disk's bound, our save, torch.save; our restore, torch.load), so that all of
 * them sample the disk over the same minutes (its speed drifts by a third); the best try of each is kept.
 * Prints a table and JSON lines {"bench":"ckpt","case",...}. */
#include <sovtrain/ckpt.h>
#include "codec.h"
#include <sovtrain/comm.h>
#include "fsio.h"
#include "rng.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <zstd.h>

/* A state to save: its tensors, all of one float dtype. Flat ones are 1-D; a model's keep their shapes. */
typedef struct bench_case {
    char name[32];
    int elem; /* bytes per element: 4 (f32) or 2 (bf16) */
    int ntensors;
    char **names;
    void **data;
    size_t *bytes;
    int *ndim;
    int64_t (*shape)[2];
} bench_case;

/* A case of n tensors, their memory still to be given. */
static bench_case new_case(const char *name, int elem, int n) {
    bench_case c = {.elem = elem, .ntensors = n};
    snprintf(c.name, sizeof c.name, "%s", name);
    c.names = calloc((size_t)n, sizeof *c.names);
    c.data = calloc((size_t)n, sizeof *c.data);
    c.bytes = calloc((size_t)n, sizeof *c.bytes);
    c.ndim = calloc((size_t)n, sizeof *c.ndim);
    c.shape = calloc((size_t)n, sizeof *c.shape);
    if (!c.names || !c.data || !c.bytes || !c.ndim || !c.shape) {
        fprintf(stderr, "ckpt_perf: out of memory\n");
        exit(1);
    }
    return c;
}

static void set_tensor(bench_case *c, int i, const char *name, void *data, int ndim, int64_t rows, int64_t cols) {
    c->names[i] = strdup(name);
    c->data[i] = data;
    c->ndim[i] = ndim;
    c->shape[i][0] = rows;
    c->shape[i][1] = ndim == 2 ? cols : 1;
    c->bytes[i] = (size_t)(rows * c->shape[i][1]) * (size_t)c->elem;
}

static void free_case(bench_case *c, int owns_data) {
    for (int i = 0; i < c->ntensors; i++) {
        free(c->names[i]);
        if (owns_data)
            free(c->data[i]);
    }
    free(c->names), free(c->data), free(c->bytes), free(c->ndim), free(c->shape);
}

static sov_dtype dtype_of(const bench_case *c) { return c->elem == 2 ? SOV_BF16 : SOV_F32; }

/* ---- a state shaped like GPT-2 124M (width 768) with AdamW's two moments: 3 x 148 tensors ---- */

/* The 148 parameter tensors of a GPT-2 of `width` (12 layers, vocabulary 50257, context 1024): name and shape. */
static int gpt2_shapes(int width, char (*names)[64], int64_t (*shape)[2], int *ndim) {
    static const struct {
        const char *name;
        int rows, cols; /* in units of width (0: 1), negative: a fixed count */
    } block[] = {{"ln_1.weight", 1, 0},        {"ln_1.bias", 1, 0},      {"attn.c_attn.weight", 1, 3},
                 {"attn.c_attn.bias", 3, 0},   {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 1, 0},
                 {"ln_2.weight", 1, 0},        {"ln_2.bias", 1, 0},      {"mlp.c_fc.weight", 1, 4},
                 {"mlp.c_fc.bias", 4, 0},      {"mlp.c_proj.weight", 4, 1}, {"mlp.c_proj.bias", 1, 0}};
    int n = 0;
    snprintf(names[n], 64, "wte.weight"), shape[n][0] = 50257, shape[n][1] = width, ndim[n++] = 2;
    snprintf(names[n], 64, "wpe.weight"), shape[n][0] = 1024, shape[n][1] = width, ndim[n++] = 2;
    for (int l = 0; l < 12; l++)
        for (size_t b = 0; b < sizeof block / sizeof block[0]; b++, n++) {
            snprintf(names[n], 64, "h.%d.%s", l, block[b].name);
            shape[n][0] = (int64_t)block[b].rows * width;
            shape[n][1] = block[b].cols ? (int64_t)block[b].cols * width : 1;
            ndim[n] = block[b].cols ? 2 : 1;
        }
    snprintf(names[n], 64, "ln_f.weight"), shape[n][0] = width, shape[n][1] = 1, ndim[n++] = 1;
    snprintf(names[n], 64, "ln_f.bias"), shape[n][0] = width, shape[n][1] = 1, ndim[n++] = 1;
    return n;
}

static float normal(sov_rng *rng, float mean, float sigma) {
    float u = sov_rng_uniform(rng) + 1e-9f, v = sov_rng_uniform(rng);
    return mean + sigma * sqrtf(-2.0f * logf(u)) * cosf(6.28318531f * v);
}

/* Values like a model part-way through training: weights N(0, 0.02) (LayerNorm gains N(1, 0.02)); the first
 * moment N(0, 1e-4); the second its square plus 1e-10 (positive, its exponents spread). */
static void gpt2_values(float *x, size_t n, int kind, int gain, sov_rng *rng) {
    for (size_t i = 0; i < n; i++) {
        float w = normal(rng, 0.0f, kind == 0 ? 0.02f : 1e-4f);
        x[i] = kind == 0 ? w + (gain ? 1.0f : 0.0f) : kind == 1 ? w : w * w + 1e-10f;
    }
}

/* The f32 case, and its bf16 cast as a second case. */
static void gpt2_cases(int width, bench_case *f32, bench_case *bf16) {
    static char names[148][64];
    static int64_t shape[148][2];
    static int ndim[148];
    int n = gpt2_shapes(width, names, shape, ndim);
    *f32 = new_case("gpt2-adamw", 4, 3 * n);
    *bf16 = new_case("gpt2-bf16", 2, 3 * n);
    static const char *prefix[3] = {"", "adamw.m.", "adamw.v."};
    sov_rng rng;
    sov_rng_seed(&rng, 124, 0);
    for (int kind = 0; kind < 3; kind++)
        for (int t = 0; t < n; t++) {
            int i = kind * n + t;
            char name[80];
            snprintf(name, sizeof name, "%s%.63s", prefix[kind], names[t]);
            size_t count = (size_t)(shape[t][0] * shape[t][1]);
            float *x = malloc(count * 4);
            uint16_t *h = malloc(count * 2);
            gpt2_values(x, count, kind, strstr(names[t], "ln_") && strstr(names[t], "weight"), &rng);
            for (size_t e = 0; e < count; e++)
                h[e] = sov_f32_to_bf16(x[e]);
            set_tensor(f32, i, name, x, ndim[t], shape[t][0], shape[t][1]);
            set_tensor(bf16, i, name, h, ndim[t], shape[t][0], shape[t][1]);
        }
}

/* The case's tensors as the writer takes them. */
static sov_ckpt_tensor *tensors_of(const bench_case *c) {
    sov_ckpt_tensor *t = calloc((size_t)c->ntensors, sizeof *t);
    for (int i = 0; t && i < c->ntensors; i++) {
        t[i] = (sov_ckpt_tensor){.name = c->names[i], .dtype = dtype_of(c), .ndim = c->ndim[i], .data = c->data[i]};
        t[i].shape[0] = c->shape[i][0];
        t[i].shape[1] = c->shape[i][1];
    }
    return t;
}

static double total_bytes(const bench_case *c) {
    double b = 0;
    for (int i = 0; i < c->ntensors; i++)
        b += (double)c->bytes[i];
    return b;
}

static void die(const char *what) {
    fprintf(stderr, "ckpt_perf: %s: %s\n", what, sov_last_error());
    exit(1);
}

/* Order-0 entropy bound of the transformed planes of the whole case: raw bits / sum of plane entropies. */
static double entropy_bound(const bench_case *c) {
    double bits = 0;
    for (int b = 0; b < c->ntensors; b++) {
        size_t count = c->bytes[b] / (size_t)c->elem;
        uint8_t *planes = malloc(c->bytes[b]);
        sov_planes_split(c->data[b], count, c->elem, SOV_TRANSFORM_FLOAT, planes);
        for (int k = 0; k < c->elem; k++)
            bits += sov_entropy_bits(planes + (size_t)k * count, count) * (double)count;
        free(planes);
    }
    return total_bytes(c) * 8.0 / bits;
}

static double zstd1_ratio(const bench_case *c) {
    size_t chunk = SOV_CKPT_DEFAULT_CHUNK_BYTES, cap = ZSTD_compressBound(chunk), stored = 0; /* as ours */
    void *out = malloc(cap);
    for (int b = 0; b < c->ntensors; b++)
        for (size_t off = 0; off < c->bytes[b]; off += chunk) {
            size_t n = c->bytes[b] - off < chunk ? c->bytes[b] - off : chunk;
            stored += ZSTD_compress(out, cap, (char *)c->data[b] + off, n, 1);
        }
    free(out);
    return total_bytes(c) / (double)stored;
}

/* Sequential write of the case's raw bytes, fsync included: buffered (one write per buffer), or with O_DIRECT
 * through a reused 4 MiB buffer of huge pages (sov_io_alloc), the fastest way found to write on these disks. */
static double disk_gbs_once(const bench_case *c, const char *dir, int direct) {
    char path[4200];
    snprintf(path, sizeof path, "%s/disk-bound.raw", dir);
    size_t block = (size_t)4 << 20;
    uint8_t *bounce = direct ? sov_io_alloc(block) : NULL;
    double t0 = sov_now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0) {
        sov_io_free(bounce, block);
        return 0.0; /* no O_DIRECT on this filesystem */
    }
    for (int b = 0; b < c->ntensors; b++)
        for (size_t off = 0; off < c->bytes[b]; off += direct ? block : c->bytes[b]) {
            size_t n = direct ? (c->bytes[b] - off < block ? c->bytes[b] - off : block) : c->bytes[b];
            const void *src = (const char *)c->data[b] + off;
            if (direct) {
                memcpy(bounce, src, n);
                n = (n + 4095) / 4096 * 4096;
                src = bounce;
            }
            if (sov_write_all(fd, src, n, path) != SOV_OK)
                die("disk bound write");
        }
    fsync(fd);
    close(fd);
    double dt = sov_now() - t0;
    unlink(path);
    sov_io_free(bounce, block);
    return total_bytes(c) / dt / 1e9;
}

/* The disk's bound in one round: the better of the two ways of writing. */
static double disk_gbs(const bench_case *c, const char *dir) {
    double buffered = disk_gbs_once(c, dir, 0), direct = disk_gbs_once(c, dir, 1);
    return buffered > direct ? buffered : direct;
}

static volatile unsigned char memcpy_sink;

static double memcpy_ms(const bench_case *c) {
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        double t = 0;
        for (int b = 0; b < c->ntensors; b++) {
            unsigned char *dst = malloc(c->bytes[b]);
            memset(dst, 1, c->bytes[b]); /* fault the pages in first: the snapshot's staging is reused too */
            double t0 = sov_now();
            memcpy(dst, c->data[b], c->bytes[b]);
            t += sov_now() - t0;
            memcpy_sink = dst[c->bytes[b] / 2]; /* keeps the copy from being optimised away */
            free(dst);
        }
        best = t < best ? t : best;
    }
    return best * 1e3;
}

/* Restores are measured from the disk, not from the page cache: the files of the checkpoint are dropped from it
 * first (a no-op for files written with O_DIRECT; bench/peers/torch_ckpt.py does the same for torch.save's). */
static void drop_cached(const char *ckpt_dir) {
    DIR *d = opendir(ckpt_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[8400];
        snprintf(path, sizeof path, "%s/%s", ckpt_dir, e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            close(fd);
        }
    }
    if (d)
        closedir(d);
}

/* CPU seconds used by the whole process so far: around a save, how many cores it kept busy (against the cores it
 * may use, whether the save was bound by the CPU or waited on the disk). */
static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec * 1e-6 + (double)u.ru_stime.tv_sec +
           (double)u.ru_stime.tv_usec * 1e-6;
}

/* One restore from the disk into the job's existing memory (torch.load makes new tensors), checked; its seconds. */
static double restore_once(const bench_case *c, const char *path, const sov_ckpt_key *key) {
    void **dst = calloc((size_t)c->ntensors, sizeof *dst);
    sov_ckpt_read_request *want = calloc((size_t)c->ntensors, sizeof *want);
    for (int b = 0; b < c->ntensors; b++) {
        dst[b] = malloc(c->bytes[b]);
        memset(dst[b], 0, c->bytes[b]);
        want[b] = (sov_ckpt_read_request){.name = c->names[b], .dtype = dtype_of(c), .dst = dst[b]};
    }
    sov_ckpt *ck;
    double t0 = sov_now();
    if (sov_ckpt_open_key(path, key, &ck) != SOV_OK)
        die("open");
    if (sov_ckpt_read_many(ck, want, c->ntensors) != SOV_OK)
        die("restore");
    double dt = sov_now() - t0;
    sov_ckpt_close(ck);
    for (int b = 0; b < c->ntensors; b++) {
        if (memcmp(dst[b], c->data[b], c->bytes[b]) != 0) {
            fprintf(stderr, "ckpt_perf: restored %s differs from what was saved\n", c->names[b]);
            exit(1);
        }
        free(dst[b]);
    }
    free(dst);
    free(want);
    return dt;
}

/* Tries of each timed figure: 3, or more for a small state (up to 12): a 15-20 ms restore on a disk whose speed
 * drifts by a third needs more than 3 samples to find its best. Ours and the peer's get as many. */
static int tries_for(double bytes) {
    double tries = bytes > 0 ? ceil(192.0 * 1048576 / bytes) : 3;
    return tries < 3 ? 3 : tries > 12 ? 12 : (int)tries;
}

/* ---- the torch.save / torch.load peer: bench/peers/torch_ckpt.py, one process per case, one try per request ---- */

typedef struct peer {
    pid_t pid;
    FILE *to, *from;
    double save_s, load_s; /* the best tries */
} peer;

/* The case's bytes for the peer to read at its start: in /dev/shm where there is one, so that writing them leaves
 * no writeback on the disk under test to slow the first tries. */
static void dump_raw(const bench_case *c, const char *dir, char *path, size_t cap) {
    snprintf(path, cap, "%s/sovtrain-ckpt-perf-%d-%s.raw", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : dir,
             (int)getpid(), c->name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        fprintf(stderr, "ckpt_perf: creating %s: %s\n", path, strerror(errno));
        exit(1);
    }
    for (int b = 0; b < c->ntensors; b++)
        if (sov_write_all(fd, c->data[b], c->bytes[b], path) != SOV_OK)
            die("writing the peer's copy of the state");
    close(fd);
    char layout[4300]; /* its tensors, so that the peer saves a dict of the same tensors: "name dims" per line */
    snprintf(layout, sizeof layout, "%s.layout", path);
    FILE *f = fopen(layout, "w");
    for (int b = 0; f && b < c->ntensors; b++)
        fprintf(f, c->ndim[b] == 2 ? "%s %lld,%lld\n" : "%s %lld\n", c->names[b], (long long)c->shape[b][0],
                (long long)c->shape[b][1]);
    if (!f || fclose(f) != 0) {
        fprintf(stderr, "ckpt_perf: writing %s: %s\n", layout, strerror(errno));
        exit(1);
    }
}

/* The peer's copy of the state and its layout, once the peer holds them (or failed to start). */
static void remove_raw(const char *raw) {
    char layout[4300];
    snprintf(layout, sizeof layout, "%s.layout", raw);
    unlink(raw);
    unlink(layout);
}

/* Ends the peer (it removes its files on "quit" or at the end of its input); returns how it exited, in words. */
static const char *peer_stop(peer *p, char *why, size_t cap) {
    snprintf(why, cap, "not started");
    if (!p->to)
        return why;
    fputs("quit\n", p->to);
    fclose(p->to);
    fclose(p->from);
    p->to = p->from = NULL;
    int status = 0;
    if (waitpid(p->pid, &status, 0) != p->pid)
        snprintf(why, cap, "lost (waitpid: %s)", strerror(errno));
    else if (WIFSIGNALED(status))
        snprintf(why, cap, "killed by signal %d%s", WTERMSIG(status),
                 WTERMSIG(status) == SIGKILL ? " (out of memory?)" : "");
    else
        snprintf(why, cap, "exited with status %d%s", WEXITSTATUS(status),
                 WEXITSTATUS(status) == 77 ? " (no python3-torch)" : "");
    return why;
}

/* In the child: the peer's end of the pipes as stdin and stdout, then the script. Only async-signal-safe calls. */
static void peer_exec(const int to[2], const int from[2], const char *script, const char *raw, const char *out) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    /* argv[0] in full: Python finds its prefix (and so Debian's torch) from it, not from the PATH's python3 */
    execl("/usr/bin/python3", "/usr/bin/python3", script, raw, out, (char *)NULL);
    static const char msg[] = "ckpt_perf: cannot run /usr/bin/python3 for the torch peer\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(127);
}

/* Starts the peer on the case's bytes. Returns 0, having said why, when it cannot run: python3-torch is not
 * installed (the peer exits 77), or it failed. */
static int peer_start(peer *p, const char *script, const bench_case *c, const char *dir) {
    char raw[4200], out[4200], line[256] = "", why[128];
    dump_raw(c, dir, raw, sizeof raw);
    snprintf(out, sizeof out, "%s/%s.pt", dir, c->name); /* torch.save's file, on the disk under test */
    int to[2], from[2];
    if (pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0) {
        fprintf(stderr, "ckpt_perf: pipe: %s\n", strerror(errno));
        exit(1);
    }
    *p = (peer){.save_s = 1e9, .load_s = 1e9};
    p->pid = fork();
    if (p->pid == 0)
        peer_exec(to, from, script, raw, out);
    close(to[0]);
    close(from[1]);
    if (p->pid < 0) {
        fprintf(stderr, "ckpt_perf: cannot start the torch peer: fork: %s\n", strerror(errno));
        close(to[1]), close(from[0]), remove_raw(raw);
        return 0;
    }
    p->to = fdopen(to[1], "w");
    p->from = fdopen(from[0], "r");
    if (!p->to || !p->from) {
        fprintf(stderr, "ckpt_perf: fdopen: %s\n", strerror(errno));
        exit(1);
    }
    /* "ready BYTES" once it holds the state: then its copy on disk can go */
    int ready = fgets(line, sizeof line, p->from) && strncmp(line, "ready ", 6) == 0 &&
                strtod(line + 6, NULL) == total_bytes(c);
    remove_raw(raw);
    if (!ready) {
        line[strcspn(line, "\n")] = '\0';
        fprintf(stderr, "ckpt_perf: the torch peer did not start (\"%s\"; %s); going on without it\n", line,
                peer_stop(p, why, sizeof why));
        return 0;
    }
    return 1;
}

/* One try of the peer's ("save" or "load"): its seconds, kept when best. A peer that fails ends the bench. */
static void peer_try(peer *p, const char *what) {
    char line[1024] = "", why[128], *end = NULL;
    fprintf(p->to, "%s\n", what);
    fflush(p->to);
    double t = fgets(line, sizeof line, p->from) ? strtod(line, &end) : -1.0;
    if (!end || end == line || !(t > 0)) {
        line[strcspn(line, "\n")] = '\0';
        fprintf(stderr, "ckpt_perf: the torch peer's %s failed: %s\n", what,
                t < 0 && !end ? peer_stop(p, why, sizeof why) : line);
        exit(1);
    }
    double *best = strcmp(what, "save") == 0 ? &p->save_s : &p->load_s;
    *best = t < *best ? t : *best;
}

/* ---- sovtrain's save and restore, in tries alternating with the disk's bound and the peer's ---- */

typedef struct figures {
    double save_gbs, stall_ms, restore_gbs, ratio, disk_gbs, save_cores;
} figures;

/* Tries of (the disk's bound, a save, the peer's save): the best of each is kept. The writer's staging is reserved
 * first, as the trainer does at startup, so that every try is a save as training makes it. Returns the last save's
 * checkpoint in path. */
static void saves(const bench_case *c, const char *dir, int threads, peer *pr, figures *f, char *path, size_t cap) {
    sov_ckpt_writer *w;
    sov_ckpt_options o = {.keep = 1, .threads = threads, .chunk_bytes = SOV_CKPT_DEFAULT_CHUNK_BYTES,
                          .commit_timeout_s = 60};
    char ckdir[4200];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt-%s", dir, c->name);
    if (sov_ckpt_writer_open(&w, ckdir, 0, 1, &o) != SOV_OK)
        die("writer");
    sov_ckpt_tensor *tensors = tensors_of(c);
    sov_ckpt_state s = {.num_tensors = c->ntensors, .tensors = tensors};
    if (sov_ckpt_writer_reserve(w, &s) != SOV_OK)
        die("reserve");
    double best = 1e9, stall = 1e9;
    f->disk_gbs = 0;
    for (int rep = 0, tries = tries_for(total_bytes(c)); rep < tries; rep++) {
        double d = disk_gbs(c, dir);
        f->disk_gbs = d > f->disk_gbs ? d : f->disk_gbs;
        s.step = rep + 1;
        double st, cpu0 = cpu_seconds();
        if (sov_ckpt_save(w, &s, (uint64_t)rep + 1, &st, NULL) != SOV_OK || sov_ckpt_wait(w, path, cap) != SOV_OK)
            die("save");
        double dt = sov_ckpt_save_seconds(w); /* from the call to durable and latest; removing the old one after */
        if (dt < best) /* over the save's own time; the pruning after it adds little CPU */
            f->save_cores = (cpu_seconds() - cpu0) / dt;
        best = dt < best ? dt : best;
        stall = st < stall ? st : stall;
        if (pr)
            peer_try(pr, "save");
    }
    sov_ckpt_writer_close(w);
    free(tensors);
    f->save_gbs = total_bytes(c) / best / 1e9;
    f->stall_ms = stall * 1e3;
}

/* Tries of (a restore, the peer's load), as many as the saves got; then the ratio, and the checkpoint goes. */
static void restores(const bench_case *c, const char *path, peer *pr, figures *f) {
    double best = 1e9;
    for (int rep = 0, tries = tries_for(total_bytes(c)); rep < tries; rep++) {
        drop_cached(path);
        double t = restore_once(c, path, NULL);
        best = t < best ? t : best;
        if (pr)
            peer_try(pr, "load");
    }
    f->restore_gbs = total_bytes(c) / best / 1e9;
    sov_ckpt *ck;
    if (sov_ckpt_open(path, &ck) != SOV_OK)
        die("open");
    double stored = 0;
    for (int r = 0; r < sov_ckpt_world_size(ck); r++) {
        char data[8400];
        struct stat sb;
        snprintf(data, sizeof data, "%s/rank-%d.bin", path, r);
        stored += stat(data, &sb) == 0 ? (double)sb.st_size : 0.0;
    }
    f->ratio = total_bytes(c) / stored;
    sov_ckpt_close(ck);
    sov_remove_dir(path);
}

/* ---- encryption: the same saves and restores with and without it, try by try ---- */

typedef struct crypto_figures {
    double plain_save_s, sealed_save_s, signed_save_s, plain_restore_s, sealed_restore_s;
} crypto_figures;

/* A save of c's state by writer w at step `step`; its seconds to durable. */
static double timed_save(sov_ckpt_writer *w, const bench_case *c, long step, char *path, size_t cap) {
    sov_ckpt_tensor *tensors = tensors_of(c);
    sov_ckpt_state s = {.step = step, .num_tensors = c->ntensors, .tensors = tensors};
    if (sov_ckpt_save(w, &s, (uint64_t)step, NULL, NULL) != SOV_OK || sov_ckpt_wait(w, path, cap) != SOV_OK)
        die("save");
    free(tensors);
    return sov_ckpt_save_seconds(w);
}

static sov_ckpt_writer *bench_writer(const bench_case *c, const char *dir, const char *kind, int threads,
                                     const sov_ckpt_key *key, const sov_ckpt_signer *signer) {
    char ckdir[4200];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt-%s-%s", dir, c->name, kind);
    sov_ckpt_options o = {.keep = 1, .threads = threads, .chunk_bytes = SOV_CKPT_DEFAULT_CHUNK_BYTES,
                          .commit_timeout_s = 60, .key = key, .sign = signer != NULL, .signer = signer};
    sov_ckpt_writer *w;
    sov_ckpt_tensor *tensors = tensors_of(c);
    sov_ckpt_state s = {.num_tensors = c->ntensors, .tensors = tensors};
    if (sov_ckpt_writer_open(&w, ckdir, 0, 1, &o) != SOV_OK || sov_ckpt_writer_reserve(w, &s) != SOV_OK)
        die("writer");
    free(tensors);
    return w;
}

/* Tries alternating a plain save, an encrypted one and an encrypted and signed one, then a plain restore and a
 * decrypting one (each from a cold page cache); the best of each. */
static void crypto_tries(const bench_case *c, const char *dir, int threads, const sov_ckpt_key *key,
                         const sov_ckpt_signer *signer, crypto_figures *f) {
    sov_ckpt_writer *plain = bench_writer(c, dir, "plain", threads, NULL, NULL);
    sov_ckpt_writer *sealed = bench_writer(c, dir, "sealed", threads, key, NULL);
    sov_ckpt_writer *sealed_signed = bench_writer(c, dir, "signed", threads, key, signer);
    char plain_path[4200], sealed_path[4200], signed_path[4200];
    *f = (crypto_figures){1e9, 1e9, 1e9, 1e9, 1e9};
    int tries = tries_for(total_bytes(c));
    for (int rep = 0; rep < tries; rep++) {
        double p = timed_save(plain, c, rep + 1, plain_path, sizeof plain_path);
        double e = timed_save(sealed, c, rep + 1, sealed_path, sizeof sealed_path);
        double g = timed_save(sealed_signed, c, rep + 1, signed_path, sizeof signed_path);
        f->plain_save_s = p < f->plain_save_s ? p : f->plain_save_s;
        f->sealed_save_s = e < f->sealed_save_s ? e : f->sealed_save_s;
        f->signed_save_s = g < f->signed_save_s ? g : f->signed_save_s;
    }
    sov_ckpt_writer_close(plain);
    sov_ckpt_writer_close(sealed);
    sov_ckpt_writer_close(sealed_signed);
    sov_remove_dir(signed_path);
    for (int rep = 0; rep < tries; rep++) {
        drop_cached(plain_path);
        double p = restore_once(c, plain_path, NULL);
        drop_cached(sealed_path);
        double e = restore_once(c, sealed_path, key);
        f->plain_restore_s = p < f->plain_restore_s ? p : f->plain_restore_s;
        f->sealed_restore_s = e < f->sealed_restore_s ? e : f->sealed_restore_s;
    }
    sov_remove_dir(plain_path);
    sov_remove_dir(sealed_path);
}

/* The key of the encrypted tries: a fresh random one in a private file. */
static sov_ckpt_key *bench_key(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/bench-key", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    unsigned char k[32];
    FILE *r = fopen("/dev/urandom", "rb");
    if (fd < 0 || !r || fread(k, 1, sizeof k, r) != sizeof k || write(fd, k, sizeof k) != (ssize_t)sizeof k)
        die("making a key file");
    fclose(r);
    close(fd);
    sov_ckpt_key *key;
    if (sov_ckpt_key_from_file(path, &key) != SOV_OK)
        die("the key file");
    unlink(path);
    return key;
}

/* The signing key of the signed tries: a fresh P-256 key in a private file. */
static sov_ckpt_signer *bench_signer(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/bench-sign.pem", dir);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!k || !f || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1)
        die("making a signing key");
    fclose(f);
    EVP_PKEY_free(k);
    sov_ckpt_signer *s;
    if (sov_ckpt_signer_from_pem(path, &s) != SOV_OK)
        die("the signing key");
    unlink(path);
    return s;
}

static void crypto_rows(bench_case *cases, int ncase, const char *dir, int threads) {
    sov_ckpt_key *key = bench_key(dir);
    sov_ckpt_signer *signer = bench_signer(dir);
    printf("# encryption at rest (AES-256-GCM per chunk) and signing (SHA-256 of each file as written, ECDSA): the "
           "same state saved\n# and restored plain, encrypted, and encrypted and signed, try by try\n"
           "# %-11s %9s %11s %7s %11s %7s %9s %11s %7s\n", "case", "save GB/s", "encrypted", "x plain", "+signed",
           "x plain", "rest GB/s", "decrypted", "x plain");
    for (int i = 0; i < ncase; i++) {
        crypto_figures f;
        double bytes = total_bytes(&cases[i]);
        crypto_tries(&cases[i], dir, threads, key, signer, &f);
        printf("  %-11s %9.3f %11.3f %7.3f %11.3f %7.3f %9.3f %11.3f %7.3f\n", cases[i].name,
               bytes / f.plain_save_s / 1e9, bytes / f.sealed_save_s / 1e9, f.plain_save_s / f.sealed_save_s,
               bytes / f.signed_save_s / 1e9, f.plain_save_s / f.signed_save_s, bytes / f.plain_restore_s / 1e9,
               bytes / f.sealed_restore_s / 1e9, f.plain_restore_s / f.sealed_restore_s);
        fprintf(stderr, "{\"bench\":\"ckpt_crypto\",\"case\":\"%s\",\"bytes\":%.0f,\"save_gbs\":%.4f,"
                "\"encrypted_save_gbs\":%.4f,\"signed_save_gbs\":%.4f,\"restore_gbs\":%.4f,"
                "\"decrypted_restore_gbs\":%.4f}\n", cases[i].name, bytes, bytes / f.plain_save_s / 1e9,
                bytes / f.sealed_save_s / 1e9, bytes / f.signed_save_s / 1e9, bytes / f.plain_restore_s / 1e9,
                bytes / f.sealed_restore_s / 1e9);
        fflush(stdout);
        fflush(stderr);
    }
    sov_ckpt_key_free(key);
    sov_ckpt_signer_free(signer);
}

static void gaussian(float *x, size_t n) {
    sov_rng rng;
    sov_rng_seed(&rng, 12345, 0);
    for (size_t i = 0; i < n; i += 2) {
        float u = sov_rng_uniform(&rng) + 1e-9f, v = sov_rng_uniform(&rng), r = 0.02f * sqrtf(-2.0f * logf(u));
        x[i] = r * cosf(6.28318531f * v);
        if (i + 1 < n)
            x[i + 1] = r * sinf(6.28318531f * v);
    }
}

int main(int argc, char **argv) {
    const char *from = NULL, *from_case = "mlp-adamw", *dir = "/tmp", *peer_script = NULL;
    size_t mib = 512;
    int threads = 2, gpt2_width = 768, crypto = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--from")) from = argv[i + 1];
        else if (!strcmp(argv[i], "--from-case")) from_case = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--mib")) mib = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--peer")) peer_script = argv[i + 1];
        else if (!strcmp(argv[i], "--gpt2")) gpt2_width = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--crypto")) crypto = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: ckpt_perf [--from CKPT [--from-case NAME]] [--dir DIR] [--mib N (0: none)] "
                            "[--threads N] [--peer SCRIPT] [--gpt2 WIDTH (0: none)] [--crypto 1: plain vs "
                            "encrypted instead]\n");
            return 2;
        }
    }
    bench_case cases[5];
    int ncase = 0;
    if (from) {
        sov_ckpt *ck;
        if (sov_ckpt_open(from, &ck) != SOV_OK)
            die(from);
        bench_case *c = &cases[ncase++]; /* every tensor of the saved state, as it saved them (a scalar as 1-D) */
        *c = new_case(from_case, 4, sov_ckpt_num_tensors(ck));
        for (int b = 0; b < c->ntensors; b++) {
            sov_ckpt_tensor_info info;
            if (sov_ckpt_tensor_at(ck, b, &info) != SOV_OK || info.dtype != SOV_F32 || info.ndim > 2)
                die("the saved state holds a tensor that is not a 0-D, 1-D or 2-D f32");
            set_tensor(c, b, info.name, NULL, info.ndim ? info.ndim : 1, info.ndim ? info.shape[0] : 1,
                       info.ndim > 1 ? info.shape[1] : 1);
            c->data[b] = malloc(c->bytes[b]);
            if (sov_ckpt_read(ck, info.name, SOV_F32, c->data[b]) != SOV_OK)
                die("reading the trained state");
        }
        sov_ckpt_close(ck);
    }
    if (mib > 0) {
        size_t n = mib << 18; /* floats in mib MiB */
        float *g = malloc(n * 4);
        gaussian(g, n);
        cases[ncase] = new_case("gauss-f32", 4, 1);
        set_tensor(&cases[ncase++], 0, "params", g, 1, (int64_t)n, 1);
        uint16_t *h = malloc(n * 2);
        for (size_t i = 0; i < n; i++)
            h[i] = sov_f32_to_bf16(g[i]);
        cases[ncase] = new_case("gauss-bf16", 2, 1);
        set_tensor(&cases[ncase++], 0, "params", h, 1, (int64_t)n, 1);
    }
    if (gpt2_width > 0) {
        gpt2_cases(gpt2_width, &cases[ncase], &cases[ncase + 1]);
        ncase += 2;
    }
    printf("# ckpt_perf: one rank, %d compression threads, chunks of %zu KiB (the trainer's), files in %s\n", threads,
           SOV_CKPT_DEFAULT_CHUNK_BYTES >> 10, dir);
    if (crypto) {
        crypto_rows(cases, ncase, dir, threads);
        for (int i = 0; i < ncase; i++)
            free_case(&cases[i], 1);
        return 0;
    }
    long cpus = sov_usable_cpus(); /* the cores this process may use (taskset, a container), as the encoders count */
    printf("# %-11s %9s %9s %9s %8s %8s %7s %7s %8s %9s %9s %8s %9s %9s %9s\n", "case", "MB", "save GB/s",
           "rest GB/s", "stall ms", "memcpy", "ratio", "bound", "% bound", "zstd -1", "disk GB/s", "% disk", "cores",
           "torch sv", "torch ld");
    if (peer_script)
        signal(SIGPIPE, SIG_IGN); /* a peer that dies is reported from the pipe's end, not by a signal */
    for (int i = 0; i < ncase; i++) {
        bench_case *c = &cases[i];
        double bound = entropy_bound(c), z1 = zstd1_ratio(c), mc = memcpy_ms(c), bytes = total_bytes(c);
        peer torch = {0};
        int with_peer = peer_script && peer_start(&torch, peer_script, c, dir);
        figures f = {0};
        char path[4200];
        saves(c, dir, threads, with_peer ? &torch : NULL, &f, path, sizeof path);
        restores(c, path, with_peer ? &torch : NULL, &f);
        char why[128];
        peer_stop(&torch, why, sizeof why);
        double tsave = with_peer ? bytes / torch.save_s / 1e9 : NAN;
        double tload = with_peer ? bytes / torch.load_s / 1e9 : NAN;
        printf("  %-11s %9.1f %9.3f %9.3f %8.1f %8.1f %7.3f %7.3f %7.1f%% %9.3f %9.3f %7.1f%% %5.2f/%-3ld"
               " %9.3f %9.3f\n", c->name, bytes / 1e6, f.save_gbs, f.restore_gbs, f.stall_ms, mc, f.ratio, bound,
               100 * f.ratio / bound, z1, f.disk_gbs, 100 * f.save_gbs / (f.disk_gbs * f.ratio), f.save_cores, cpus,
               tsave, tload);
        char peer_json[128] = "";
        if (with_peer)
            snprintf(peer_json, sizeof peer_json, ",\"torch_save_gbs\":%.4f,\"torch_load_gbs\":%.4f", tsave, tload);
        fprintf(stderr, "{\"bench\":\"ckpt\",\"case\":\"%s\",\"bytes\":%.0f,\"save_gbs\":%.4f,\"restore_gbs\":%.4f,"
                "\"ratio\":%.4f,\"stall_ms\":%.2f,\"entropy_bound\":%.4f,\"zstd1_ratio\":%.4f,\"disk_gbs\":%.4f,"
                "\"memcpy_ms\":%.2f,\"save_cpu_cores\":%.2f,\"cpus\":%ld%s}\n", c->name, bytes, f.save_gbs,
                f.restore_gbs, f.ratio, f.stall_ms, bound, z1, f.disk_gbs, mc, f.save_cores, cpus, peer_json);
        fflush(stdout);
        fflush(stderr);
    }
    for (int i = 0; i < ncase; i++) /* each tensor's memory belongs to one case */
        free_case(&cases[i], 1);
    return 0;
}
