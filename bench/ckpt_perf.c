/* ckpt_perf: checkpoint save/restore speed and compression beside their bounds and peers, in one run.
 *
 * Cases: (a) a trained MLP's real state (params + AdamW moments, read from a checkpoint given with --from),
 * (b) a synthetic f32 state (Gaussian, sigma 0.02; --mib, default 512), (c) the bf16 cast of (b).
 * For each: sovtrain's save (snapshot + compression + writes + fsync + commit: from the call until the checkpoint
 * is durable and latest; one rank, --threads compression threads) in GB/s of raw state, the training stall (the snapshot), restore GB/s (open + decode + verify, from the
 * disk: the files are dropped from the page cache first), the ratio; and, on the same bytes: the order-0 entropy bound of the transformed byte planes, plain zstd -1 on the
 * raw bytes, the disk's sequential write bandwidth with fsync (the better of buffered and O_DIRECT writes,
 * measured in rounds alternating with the saves; the best of each), and
 * one memcpy of the state; and the cores the process kept busy during the best save (CPU time / its time; against
 * the machine's count it tells a save bound by the CPU from one that waited on the disk). --torch-dump DIR also
 * writes each case's raw bytes there for bench/peers/torch_ckpt.py (the torch.save / torch.load peer).
 * Prints a table and JSON lines {"bench":"ckpt","case",...}. */
#include "ckpt.h"
#include "codec.h"
#include "comm.h"
#include "fsio.h"
#include "rng.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

typedef struct bench_case {
    char name[32];
    int elem;             /* bytes per element: 4 (f32) or 2 (bf16) */
    int nbuf;
    const char *names[3];
    void *data[3];
    size_t bytes[3];
} bench_case;

static double total_bytes(const bench_case *c) {
    double b = 0;
    for (int i = 0; i < c->nbuf; i++)
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
    for (int b = 0; b < c->nbuf; b++) {
        size_t count = c->bytes[b] / (size_t)c->elem;
        uint8_t *planes = malloc(c->bytes[b]);
        sov_planes_split(c->data[b], count, c->elem, planes);
        for (int k = 0; k < c->elem; k++)
            bits += sov_entropy_bits(planes + (size_t)k * count, count) * (double)count;
        free(planes);
    }
    return total_bytes(c) * 8.0 / bits;
}

static double zstd1_ratio(const bench_case *c) {
    size_t chunk = SOV_CKPT_DEFAULT_CHUNK_BYTES, cap = ZSTD_compressBound(chunk), stored = 0; /* as ours */
    void *out = malloc(cap);
    for (int b = 0; b < c->nbuf; b++)
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
    for (int b = 0; b < c->nbuf; b++)
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
        for (int b = 0; b < c->nbuf; b++) {
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

/* CPU seconds used by the whole process so far: around a save, how many cores it kept busy (against the machine's
 * count, whether the save was bound by the CPU or waited on the disk). */
static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec * 1e-6 + (double)u.ru_stime.tv_sec +
           (double)u.ru_stime.tv_usec * 1e-6;
}

/* One restore from the disk into the job's existing buffers (torch.load makes new ones), checked; its seconds. */
static double restore_once(const bench_case *c, const char *path, sov_ckpt_dtype dtype) {
    void *dst[3];
    sov_ckpt_buffer want[3];
    for (int b = 0; b < c->nbuf; b++) {
        dst[b] = malloc(c->bytes[b]);
        memset(dst[b], 0, c->bytes[b]);
        want[b] = (sov_ckpt_buffer){c->names[b], dst[b], c->bytes[b] / (size_t)c->elem, dtype};
    }
    sov_ckpt *ck;
    double t0 = sov_now();
    if (sov_ckpt_open(path, &ck) != SOV_OK)
        die("open");
    if (sov_ckpt_read_buffers(ck, want, c->nbuf) != SOV_OK)
        die("restore");
    double dt = sov_now() - t0;
    sov_ckpt_close(ck);
    for (int b = 0; b < c->nbuf; b++) {
        if (memcmp(dst[b], c->data[b], c->bytes[b]) != 0) {
            fprintf(stderr, "ckpt_perf: restored %s differs from what was saved\n", c->names[b]);
            exit(1);
        }
        free(dst[b]);
    }
    return dt;
}

/* Rounds of (the disk's bound, then a save), so that both see the same state of a disk whose speed drifts; the
 * best of each is kept. The first save also warms the writer's staging, as in training. A small state gets more:
 * a 15-20 ms restore on a disk whose speed drifts by a third needs more than 3 samples to find its best. The rule is
 * bench/peers/torch_ckpt.py's too, so that torch.save and torch.load get as many tries. */
static int tries_for(double bytes) {
    double tries = bytes > 0 ? ceil(192.0 * 1048576 / bytes) : 3;
    return tries < 3 ? 3 : tries > 12 ? 12 : (int)tries;
}

/* Saves and restores with sovtrain; measures the disk bound between the saves. */
static void sovtrain_save_restore(const bench_case *c, const char *dir, int threads, double *save_gbs,
                                  double *stall_ms, double *restore_gbs, double *ratio, double *disk,
                                  double *save_cores) {
    sov_ckpt_writer *w;
    sov_ckpt_options o = {.keep = 1, .threads = threads, .chunk_bytes = SOV_CKPT_DEFAULT_CHUNK_BYTES,
                          .commit_timeout_s = 60};
    char ckdir[4200];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt-%s", dir, c->name);
    if (sov_ckpt_writer_open(&w, ckdir, 0, 1, &o) != SOV_OK)
        die("writer");
    sov_ckpt_state s = {.num_buffers = c->nbuf};
    sov_ckpt_dtype dtype = c->elem == 2 ? SOV_CKPT_BF16 : SOV_CKPT_F32;
    for (int b = 0; b < c->nbuf; b++)
        s.buffers[b] = (sov_ckpt_buffer){c->names[b], c->data[b], c->bytes[b] / (size_t)c->elem, dtype};
    double best = 1e9, stall = 1e9;
    char path[4200];
    *disk = 0;
    int tries = tries_for(total_bytes(c));
    for (int rep = 0; rep < tries; rep++) {
        double d = disk_gbs(c, dir);
        *disk = d > *disk ? d : *disk;
        s.step = rep + 1;
        double st, cpu0 = cpu_seconds();
        if (sov_ckpt_save(w, &s, (uint64_t)rep + 1, &st, NULL) != SOV_OK || sov_ckpt_wait(w, path, sizeof path) != SOV_OK)
            die("save");
        double dt = sov_ckpt_save_seconds(w); /* from the call to durable and latest; removing the old one after */
        if (dt < best) /* over the save's own time; the pruning after it adds little CPU */
            *save_cores = (cpu_seconds() - cpu0) / dt;
        best = dt < best ? dt : best;
        stall = st < stall ? st : stall;
    }
    sov_ckpt_writer_close(w);
    drop_cached(path);
    *save_gbs = total_bytes(c) / best / 1e9;
    *stall_ms = stall * 1e3;
    double best_restore = 1e9;
    for (int rep = 0; rep < tries; rep++) { /* as many tries as the saves and as torch.load get */
        drop_cached(path);
        double t = restore_once(c, path, dtype);
        best_restore = t < best_restore ? t : best_restore;
    }
    *restore_gbs = total_bytes(c) / best_restore / 1e9;
    sov_ckpt *ck;
    if (sov_ckpt_open(path, &ck) != SOV_OK)
        die("open");
    double stored = 0;
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(sov_ckpt_manifest(ck), "files"), i, f)
        stored += (double)json_integer_value(json_object_get(f, "bytes"));
    *ratio = total_bytes(c) / stored;
    sov_ckpt_close(ck);
    sov_remove_dir(path);
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

static void dump_raw(const bench_case *c, const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.raw", dir, c->name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (int b = 0; b < c->nbuf; b++)
        sov_write_all(fd, c->data[b], c->bytes[b], path);
    close(fd);
}

int main(int argc, char **argv) {
    const char *from = NULL, *dir = "/tmp", *torch_dump = NULL;
    size_t mib = 512;
    int threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--from")) from = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--mib")) mib = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--torch-dump")) torch_dump = argv[i + 1];
        else {
            fprintf(stderr, "usage: ckpt_perf [--from CKPT] [--dir DIR] [--mib N] [--threads N] [--torch-dump DIR]\n");
            return 2;
        }
    }
    bench_case cases[3];
    int ncase = 0;
    if (from) {
        sov_ckpt *ck;
        if (sov_ckpt_open(from, &ck) != SOV_OK)
            die(from);
        bench_case *c = &cases[ncase++];
        *c = (bench_case){.name = "mlp-adamw", .elem = 4};
        const char *names[3] = {"params", "adamw.m", "adamw.v"};
        for (int b = 0; b < 3; b++) {
            size_t n = sov_ckpt_buffer_count(ck, names[b]);
            c->names[c->nbuf] = names[b];
            c->data[c->nbuf] = malloc(n * 4);
            c->bytes[c->nbuf] = n * 4;
            if (sov_ckpt_read_buffer(ck, names[b], SOV_CKPT_F32, c->data[c->nbuf], n) != SOV_OK)
                die("reading the trained state");
            c->nbuf++;
        }
        sov_ckpt_close(ck);
    }
    size_t n = mib << 18; /* floats in mib MiB */
    float *g = malloc(n * 4);
    gaussian(g, n);
    cases[ncase++] = (bench_case){.name = "gauss-f32", .elem = 4, .nbuf = 1, .names = {"params"}, .data = {g},
                                  .bytes = {n * 4}};
    uint16_t *h = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        h[i] = sov_f32_to_bf16(g[i]);
    cases[ncase++] = (bench_case){.name = "gauss-bf16", .elem = 2, .nbuf = 1, .names = {"params"}, .data = {h},
                                  .bytes = {n * 2}};
    printf("# ckpt_perf: one rank, %d compression threads, chunks of %zu KiB (the trainer's), files in %s\n", threads,
           SOV_CKPT_DEFAULT_CHUNK_BYTES >> 10, dir);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    printf("# %-11s %9s %9s %9s %8s %8s %7s %7s %8s %9s %9s %8s %9s\n", "case", "MB", "save GB/s", "rest GB/s", "stall ms",
           "memcpy", "ratio", "bound", "% bound", "zstd -1", "disk GB/s", "% disk", "cores");
    for (int i = 0; i < ncase; i++) {
        bench_case *c = &cases[i];
        if (torch_dump)
            dump_raw(c, torch_dump);
        double bound = entropy_bound(c), z1 = zstd1_ratio(c), mc = memcpy_ms(c);
        double save, stall, rest, ratio, disk, cores = 0;
        sovtrain_save_restore(c, dir, threads, &save, &stall, &rest, &ratio, &disk, &cores);
        printf("  %-11s %9.1f %9.3f %9.3f %8.1f %8.1f %7.3f %7.3f %7.1f%% %9.3f %9.3f %7.1f%% %5.2f/%-3ld\n", c->name,
               total_bytes(c) / 1e6, save, rest, stall, mc, ratio, bound, 100 * ratio / bound, z1, disk,
               100 * save / (disk * ratio), cores, cpus);
        fprintf(stderr, "{\"bench\":\"ckpt\",\"case\":\"%s\",\"bytes\":%.0f,\"save_gbs\":%.4f,\"restore_gbs\":%.4f,"
                "\"ratio\":%.4f,\"stall_ms\":%.2f,\"entropy_bound\":%.4f,\"zstd1_ratio\":%.4f,\"disk_gbs\":%.4f,"
                "\"memcpy_ms\":%.2f,\"save_cpu_cores\":%.2f,\"cpus\":%ld}\n", c->name, total_bytes(c), save, rest, ratio,
                isnan(stall) ? -1.0 : stall, bound, z1, disk, mc, cores, cpus);
        fflush(stdout);
    }
    return 0;
}
