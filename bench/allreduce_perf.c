/* allreduce_perf: allreduce bandwidth and latency of sovtrain's backends beside plain MPI_Allreduce, measured in
 * the same run, in the style of nccl-tests. Run it as a job: sovtrain launch -np 2 -- build/bench/allreduce_perf
 *
 * For each size (4 KiB .. 256 MiB, x4): time per in-place f32 sum allreduce (mean over an iteration count that
 * rank 0 picks so each measurement lasts ~0.25 s, the slowest rank's time), algbw = bytes / time,
 * busbw = algbw x 2(n-1)/n (nccl-tests' definition), and a correctness count: after timing, one more allreduce of
 * exactly representable data, every element checked. Backends: shm (buffers from sov_comm_alloc: zero-copy),
 * shm-copy (malloc'd buffers: copied through shared memory), shm-nostagger (zero-copy without the per-rank
 * address stagger), mpi (sovtrain's MPI backend) and MPI_Allreduce (the peer: Open MPI called directly); in a
 * CUDA build where every rank on the host has a GPU, nccl and nccl-oop (buffers in GPU memory, in place and out
 * of place; their peer is nccl-tests' all_reduce_perf, run beside it by scripts/device_check.sh); and tcp (the
 * backend of jobs started without mpirun, over loopback here) when MASTER_ADDR/MASTER_PORT are set, as `sovtrain
 * launch` sets them. --only NAME,... keeps the named backends.
 * Prints a table and JSON lines {"bench":"allreduce","backend","ranks","bytes","time_us","algbw_gbs",
 * "busbw_gbs","wrong"}. */
#include <sovtrain/comm.h>
#include "device.h"
#include <sovtrain/runtime.h>

#include <mpi.h>
#include <stdio.h>
#ifdef SOVTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#include <stdlib.h>
#include <string.h>

static int rank, size;

typedef struct backend {
    const char *name;
    sov_comm *comm; /* NULL: plain MPI_Allreduce */
    int registered; /* buffers from sov_comm_alloc */
    int gpu;        /* buffers in GPU memory (nccl) */
    int out_of_place; /* from a second buffer into the timed one (as nccl-tests' out-of-place columns) */
} backend;

static void die(const char *what) {
    fprintf(stderr, "allreduce_perf: rank %d: %s: %s\n", rank, what, sov_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* One allreduce into buf: in place, or from src for an out-of-place backend. */
static void reduce_once(const backend *b, const float *src, float *buf, size_t n) {
    if (!b->comm)
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (sov_comm_allreduce(b->comm, b->out_of_place ? src : buf, buf, n, SOV_F32, SOV_SUM) != SOV_OK)
        die(b->name);
}

/* Seconds per allreduce over `iters` iterations, the slowest rank's. */
static double time_iters(const backend *b, const float *src, float *buf, size_t n, int iters) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        reduce_once(b, src, buf, n);
    double dt = MPI_Wtime() - t0, worst;
    MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return worst / iters;
}

/* Copies n floats between host memory and the backend's buffer (GPU memory for nccl). */
static void copy_floats(const backend *b, float *dst, const float *src, size_t n) {
#ifdef SOVTRAIN_HAVE_CUDA
    if (b->gpu) {
        if (cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDefault) != cudaSuccess)
            die("cudaMemcpy");
        return;
    }
#endif
    (void)b;
    memcpy(dst, src, n * sizeof(float));
}

static long check(const backend *b, float *src, float *buf, size_t n) {
    float *host = malloc(n * sizeof(float));
    if (!host)
        die("allocating the check buffer");
    for (size_t i = 0; i < n; i++)
        host[i] = (float)((int)((i * 7 + (size_t)rank * 3) % 64) - 32);
    copy_floats(b, b->out_of_place ? src : buf, host, n);
    reduce_once(b, src, buf, n);
    copy_floats(b, host, buf, n);
    long wrong = 0;
    for (size_t i = 0; i < n; i++) {
        float want = 0;
        for (int r = 0; r < size; r++)
            want += (float)((int)((i * 7 + (size_t)r * 3) % 64) - 32);
        wrong += host[i] != want;
    }
    free(host);
    long total;
    MPI_Allreduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

static void measure(const backend *b, size_t bytes, double target_s, double *time_us, long *wrong) {
    size_t n = bytes / sizeof(float);
    float *buf = b->registered ? sov_comm_alloc(b->comm, bytes) : malloc(bytes), *ones = malloc(bytes);
    float *src = !b->out_of_place ? buf : b->registered ? sov_comm_alloc(b->comm, bytes) : malloc(bytes);
    if (!buf || !ones || !src)
        die("allocating the buffer");
    for (size_t i = 0; i < n; i++)
        ones[i] = 1.0f;
    copy_floats(b, buf, ones, n);
    copy_floats(b, src, ones, n);
    free(ones);
    double one = time_iters(b, src, buf, n, 2); /* warm-up, and a first estimate */
    int iters = (int)(target_s / (one > 1e-7 ? one : 1e-7));
    iters = iters < 3 ? 3 : iters > 20000 ? 20000 : iters;
    MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
    *time_us = time_iters(b, src, buf, n, iters) * 1e6;
    *wrong = check(b, src, buf, n);
    for (int k = 0; k < (b->out_of_place ? 2 : 1); k++) {
        float *p = k ? src : buf;
        if (b->registered)
            sov_comm_free(b->comm, p);
        else
            free(p);
    }
}

static sov_comm *make_comm(sov_comm_backend kind, const char *stagger) {
    sov_world w;
    if (sov_world_from_env(&w) != SOV_OK)
        die("reading the rank environment");
    setenv("SOVTRAIN_SHM_STAGGER", stagger, 1);
    sov_comm *c;
    sov_comm_config cfg = {.backend = kind, .timeout_s = 120, .gpu = kind == SOV_COMM_NCCL};
    if (sov_comm_init(&c, &w, &cfg) != SOV_OK)
        die(sov_comm_backend_name(kind));
    return c;
}

/* 1 when every rank on this host can have a GPU of its own (NCCL refuses two ranks on one GPU). */
static int gpus_for_every_rank(void) {
    char why[256];
    sov_world w;
    int gpus = sov_host_gpus(sov_gpu_count(why, sizeof why));
    return sov_world_from_env(&w) == SOV_OK && gpus >= w.local_size;
}

/* 1 when `name` is one of the comma-separated names in `list`. */
static int listed(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    size_t min_bytes = 4096, max_bytes = (size_t)256 << 20;
    double target_s = 0.25;
    const char *only = NULL;
    int any_wrong = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max") == 0 && i + 1 < argc)
            max_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--min") == 0 && i + 1 < argc)
            min_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--time") == 0 && i + 1 < argc)
            target_s = atof(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            if (rank == 0)
                fprintf(stderr, "usage: allreduce_perf [--min BYTES] [--max BYTES] [--time SECONDS_PER_POINT] "
                        "[--only BACKEND,...]\n");
            MPI_Finalize();
            return 2;
        }
    }
    sov_comm *shm = make_comm(SOV_COMM_SHM, "1"), *shm_flat = make_comm(SOV_COMM_SHM, "0");
    sov_comm *mpi = make_comm(SOV_COMM_MPI, "1"), *nccl = gpus_for_every_rank() ? make_comm(SOV_COMM_NCCL, "1") : NULL;
    /* tcp meets at MASTER_ADDR:MASTER_PORT, which `sovtrain launch` sets */
    sov_comm *tcp = getenv("MASTER_ADDR") && getenv("MASTER_PORT") ? make_comm(SOV_COMM_TCP, "1") : NULL;
    backend all[] = {{"MPI_Allreduce", NULL, 0, 0, 0}, {"mpi", mpi, 0, 0, 0}, {"shm", shm, 1, 0, 0},
                     {"shm-copy", shm, 0, 0, 0}, {"shm-nostagger", shm_flat, 1, 0, 0}, {"nccl", nccl, 1, 1, 0},
                     {"nccl-oop", nccl, 1, 1, 1}, {"tcp", tcp, 0, 0, 0}};
    enum { NB = sizeof all / sizeof *all };
    backend backends[NB];
    int nb = 0;
    for (int i = 0; i < NB; i++) /* the peer always comes first: the ratios are to it */
        if ((all[i].comm || i == 0) && (i == 0 || !only || listed(only, all[i].name)))
            backends[nb++] = all[i];
    double bus = 2.0 * (size - 1) / size;
    if (rank == 0) {
        printf("# allreduce_perf: %d ranks, f32 sum in place; algbw = bytes/time, busbw = algbw x 2(n-1)/n;\n"
               "# 'vs MPI' = MPI_Allreduce's time / this backend's time (> 1: faster than the peer)\n", size);
        printf("# %12s  %-14s %11s %12s %12s %7s %8s\n", "bytes", "backend", "time(us)", "algbw(GB/s)",
               "busbw(GB/s)", "wrong", "vs MPI");
    }
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
        double peer_us = 0;
        for (int b = 0; b < nb; b++) {
            double us;
            long wrong;
            measure(&backends[b], bytes, target_s, &us, &wrong);
            any_wrong |= wrong != 0;
            if (b == 0)
                peer_us = us;
            double algbw = (double)bytes / (us * 1e-6) / 1e9;
            if (rank == 0) {
                printf("  %12zu  %-14s %11.2f %12.3f %12.3f %7ld %8.2f\n", bytes, backends[b].name, us, algbw,
                       algbw * bus, wrong, peer_us / us);
                fprintf(stderr, "{\"bench\":\"allreduce\",\"backend\":\"%s\",\"ranks\":%d,\"bytes\":%zu,\"time_us\":%.3f,"
                        "\"algbw_gbs\":%.4f,\"busbw_gbs\":%.4f,\"wrong\":%ld}\n",
                        backends[b].name, size, bytes, us, algbw, algbw * bus, wrong);
            }
        }
        fflush(stdout);
    }
    sov_comm_destroy(shm);
    sov_comm_destroy(shm_flat);
    sov_comm_destroy(mpi);
    sov_comm_destroy(nccl);
    sov_comm_destroy(tcp);
    MPI_Finalize();
    if (rank == 0 && any_wrong)
        fprintf(stderr, "allreduce_perf: some results were wrong (the 'wrong' column)\n");
    return any_wrong ? 1 : 0;
}
