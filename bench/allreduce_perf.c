/* allreduce_perf: allreduce bandwidth and latency of sovtrain's backends beside plain MPI_Allreduce, measured in
 * the same run, in the style of nccl-tests. Run it as a job: sovtrain launch -np 2 -- build/bench/allreduce_perf
 *
 * For each size (4 KiB .. 256 MiB, x4): time per in-place f32 sum allreduce (mean over an iteration count that
 * rank 0 picks so each measurement lasts ~0.25 s, the slowest rank's time), algbw = bytes / time,
 * busbw = algbw x 2(n-1)/n (nccl-tests' definition), and a correctness count: after timing, one more allreduce of
 * exactly representable data, every element checked. Backends: shm (buffers from sov_comm_alloc: zero-copy),
 * shm-copy (malloc'd buffers: copied through shared memory), shm-nostagger (zero-copy without the per-rank
 * address stagger), mpi (sovtrain's MPI backend) and MPI_Allreduce (the peer: Open MPI called directly).
 * Prints a table and JSON lines {"bench":"allreduce","backend","ranks","bytes","time_us","algbw_gbs",
 * "busbw_gbs","wrong"}. */
#include "comm.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, size;

typedef struct backend {
    const char *name;
    sov_comm *comm; /* NULL: plain MPI_Allreduce */
    int registered; /* buffers from sov_comm_alloc */
} backend;

static void die(const char *what) {
    fprintf(stderr, "allreduce_perf: rank %d: %s: %s\n", rank, what, sov_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void reduce_once(const backend *b, float *buf, size_t n) {
    if (!b->comm)
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (sov_comm_allreduce(b->comm, buf, buf, n, SOV_F32, SOV_SUM) != SOV_OK)
        die(b->name);
}

/* Seconds per allreduce over `iters` iterations, the slowest rank's. */
static double time_iters(const backend *b, float *buf, size_t n, int iters) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        reduce_once(b, buf, n);
    double dt = MPI_Wtime() - t0, worst;
    MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return worst / iters;
}

static long check(const backend *b, float *buf, size_t n) {
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)((int)((i * 7 + (size_t)rank * 3) % 64) - 32);
    reduce_once(b, buf, n);
    long wrong = 0;
    for (size_t i = 0; i < n; i++) {
        float want = 0;
        for (int r = 0; r < size; r++)
            want += (float)((int)((i * 7 + (size_t)r * 3) % 64) - 32);
        wrong += buf[i] != want;
    }
    long total;
    MPI_Allreduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

static void measure(const backend *b, size_t bytes, double target_s, double *time_us, long *wrong) {
    size_t n = bytes / sizeof(float);
    float *buf = b->registered ? sov_comm_alloc(b->comm, bytes) : malloc(bytes);
    if (!buf)
        die("allocating the buffer");
    for (size_t i = 0; i < n; i++)
        buf[i] = 1.0f;
    double one = time_iters(b, buf, n, 2); /* warm-up, and a first estimate */
    int iters = (int)(target_s / (one > 1e-7 ? one : 1e-7));
    iters = iters < 3 ? 3 : iters > 20000 ? 20000 : iters;
    MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
    *time_us = time_iters(b, buf, n, iters) * 1e6;
    *wrong = check(b, buf, n);
    if (b->registered)
        sov_comm_free(b->comm, buf);
    else
        free(buf);
}

static sov_comm *make_comm(sov_comm_backend kind, const char *stagger) {
    sov_world w;
    if (sov_world_from_env(&w) != SOV_OK)
        die("reading the rank environment");
    setenv("SOVTRAIN_SHM_STAGGER", stagger, 1);
    sov_comm *c;
    sov_comm_config cfg = {.backend = kind, .timeout_s = 120};
    if (sov_comm_init(&c, &w, &cfg) != SOV_OK)
        die(sov_comm_backend_name(kind));
    return c;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    size_t min_bytes = 4096, max_bytes = (size_t)256 << 20;
    double target_s = 0.25;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max") == 0 && i + 1 < argc)
            max_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--min") == 0 && i + 1 < argc)
            min_bytes = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--time") == 0 && i + 1 < argc)
            target_s = atof(argv[++i]);
        else {
            if (rank == 0)
                fprintf(stderr, "usage: allreduce_perf [--min BYTES] [--max BYTES] [--time SECONDS_PER_POINT]\n");
            MPI_Finalize();
            return 2;
        }
    }
    sov_comm *shm = make_comm(SOV_COMM_SHM, "1"), *shm_flat = make_comm(SOV_COMM_SHM, "0");
    sov_comm *mpi = make_comm(SOV_COMM_MPI, "1");
    backend backends[] = {{"MPI_Allreduce", NULL, 0}, {"mpi", mpi, 0}, {"shm", shm, 1}, {"shm-copy", shm, 0},
                          {"shm-nostagger", shm_flat, 1}};
    int nb = (int)(sizeof backends / sizeof *backends);
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
    MPI_Finalize();
    return 0;
}
