/* comm_check: every collective x dtype x in/out-of-place x count x buffer kind against a host reference, on a
 * real multi-rank job (run under mpirun; backend from argv[1]).
 *
 * Two kinds of input: "exact" (small integers: every summation order gives the same bits, so every backend must
 * match the reference exactly) and "random" (the reference sums in rank order, as shm promises: shm and self must
 * match it bit for bit; MPI-based backends within a tolerance). Every rank's output must be bitwise identical to
 * every other rank's, checked through MPI directly, not through the communicator under test.
 * Buffers come both from sov_comm_alloc (zero-copy) and from malloc (copied); for nccl, from CUDA managed memory,
 * which NCCL reads on the GPU and this test reads on the host, and from malloc (staged through the GPU by the
 * backend) (exit 77, a skip, where no GPU serves every rank).
 * Prints one line per failure and a summary; exits 1 on any failure. */
#include <sovtrain/comm.h>
#include "device.h"
#include <sovtrain/runtime.h>

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#ifdef SOVTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static int rank, size, failures, checks, exact_backend, gpu;
static sov_comm *comm;

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* The input value of element i on rank r, as a float already representable in dtype. */
static float value(int r, size_t i, sov_dtype dt, int exact) {
    float v = exact ? (float)((int)((r * 7 + i * 13) % 17) - 8)
                    : (float)((double)(mix((uint64_t)r << 40 ^ i) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    if (dt == SOV_BF16)
        return sov_bf16_to_f32(sov_f32_to_bf16(v));
    if (dt == SOV_F16)
        return sov_f16_to_f32(sov_f32_to_f16(v));
    if (dt == SOV_U8)
        return (float)(uint8_t)(r * 31 + i * 7);
    return v;
}

static void store(void *buf, size_t i, sov_dtype dt, double v) {
    switch (dt) {
    case SOV_F32: ((float *)buf)[i] = (float)v; break;
    case SOV_F64: ((double *)buf)[i] = v; break;
    case SOV_BF16: ((uint16_t *)buf)[i] = sov_f32_to_bf16((float)v); break;
    case SOV_F16: ((uint16_t *)buf)[i] = sov_f32_to_f16((float)v); break;
    case SOV_U8: ((uint8_t *)buf)[i] = (uint8_t)(int)v; break;
    default: break; /* collectives take only the types above */
    }
}

static double load(const void *buf, size_t i, sov_dtype dt) {
    switch (dt) {
    case SOV_F32: return ((const float *)buf)[i];
    case SOV_F64: return ((const double *)buf)[i];
    case SOV_BF16: return sov_bf16_to_f32(((const uint16_t *)buf)[i]);
    case SOV_F16: return sov_f16_to_f32(((const uint16_t *)buf)[i]);
    case SOV_U8: return ((const uint8_t *)buf)[i];
    default: break;
    }
    return 0;
}

/* Reference reduction of element i over all ranks, in rank order, accumulated as the API promises
 * (f32 for f32/bf16/f16, f64 for f64, wrapping u8), stored into ref[i]. */
static void reference(void *ref, size_t i, size_t src_i, sov_dtype dt, sov_redop op, int exact) {
    if (dt == SOV_F64) {
        double acc = value(0, src_i, dt, exact);
        for (int r = 1; r < size; r++) {
            double v = value(r, src_i, dt, exact);
            acc = op == SOV_MAX ? (v > acc ? v : acc) : acc + v;
        }
        store(ref, i, dt, op == SOV_AVG ? acc / size : acc);
    } else if (dt == SOV_U8) {
        uint8_t acc = 0;
        for (int r = 0; r < size; r++)
            acc = (uint8_t)(acc + (uint8_t)value(r, src_i, dt, exact));
        store(ref, i, dt, acc);
    } else {
        float acc = value(0, src_i, dt, exact);
        for (int r = 1; r < size; r++) {
            float v = value(r, src_i, dt, exact);
            acc = op == SOV_MAX ? (v > acc ? v : acc) : acc + v;
        }
        store(ref, i, dt, op == SOV_AVG ? acc / (float)size : acc);
    }
}

static void fail(const char *what, const char *detail) {
    failures++;
    if (failures <= 30)
        fprintf(stderr, "rank %d: FAIL %s: %s\n", rank, what, detail);
}

/* Compares got (n elements) with ref: bitwise when `bitwise`, else within a dtype-sized tolerance. */
static void compare(const char *what, const void *got, const void *ref, size_t n, sov_dtype dt, int bitwise) {
    checks++;
    size_t esz = sov_dtype_size(dt);
    for (size_t i = 0; i < n; i++) {
        if (memcmp((const char *)got + i * esz, (const char *)ref + i * esz, esz) == 0)
            continue;
        double g = load(got, i, dt), r = load(ref, i, dt);
        double tol = dt == SOV_F64 ? 1e-12 : dt == SOV_F32 ? 1e-5 : dt == SOV_F16 ? 2e-3 : 2e-2;
        if (!bitwise && fabs(g - r) <= tol * (1.0 + fabs(r)))
            continue;
        char detail[200];
        snprintf(detail, sizeof detail, "element %zu of %zu: got %.9g, expected %.9g", i, n, g, r);
        fail(what, detail);
        return;
    }
}

/* Every rank's output bytes must hash the same; checked with MPI itself. */
static void same_on_all_ranks(const char *what, const void *buf, size_t bytes) {
    uint64_t h = XXH3_64bits(buf, bytes), *all = malloc((size_t)size * sizeof *all);
    MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    for (int r = 0; r < size; r++)
        if (all[r] != all[0]) {
            char detail[80];
            snprintf(detail, sizeof detail, "rank %d's result differs from rank 0's", r);
            fail(what, detail);
            break;
        }
    free(all);
}

static void *buffer(size_t bytes, int registered) {
    void *p = NULL;
#ifdef SOVTRAIN_HAVE_CUDA
    if (gpu && registered) {
        if (cudaMallocManaged(&p, bytes ? bytes : 1, cudaMemAttachGlobal) != cudaSuccess)
            p = NULL;
        else
            memset(p, 0, bytes ? bytes : 1);
    } else
#endif
        p = registered ? sov_comm_alloc(comm, bytes ? bytes : 1) : calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "rank %d: allocation of %zu bytes failed: %s\n", rank, bytes, sov_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}

static void release(void *p, int registered) {
#ifdef SOVTRAIN_HAVE_CUDA
    if (gpu && registered) {
        cudaFree(p);
        return;
    }
#endif
    if (registered)
        sov_comm_free(comm, p);
    else
        free(p);
}

static void check_status(const char *what, sov_status st) {
    if (st != SOV_OK) {
        fprintf(stderr, "rank %d: %s failed: %s\n", rank, what, sov_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

typedef struct { sov_dtype dt; int exact, reg, inplace; size_t n; } cfg;

static void describe(char *out, size_t cap, const char *op, const cfg *c, const char *extra) {
    snprintf(out, cap, "%s %s n=%zu %s %s %s%s", op, sov_dtype_name(c->dt), c->n, c->inplace ? "in-place" : "out-of-place",
             c->reg ? "comm_alloc" : "malloc", c->exact ? "exact" : "random", extra);
}

static void test_allreduce(const cfg *c, sov_redop op) {
    size_t esz = sov_dtype_size(c->dt), bytes = c->n * esz;
    void *send = buffer(bytes, c->reg), *recv = c->inplace ? send : buffer(bytes, c->reg), *ref = buffer(bytes, 0);
    for (size_t i = 0; i < c->n; i++) {
        store(send, i, c->dt, value(rank, i, c->dt, c->exact));
        reference(ref, i, i, c->dt, op, c->exact);
    }
    char what[160];
    describe(what, sizeof what, op == SOV_SUM ? "allreduce-sum" : op == SOV_AVG ? "allreduce-avg" : "allreduce-max", c, "");
    check_status(what, sov_comm_allreduce(comm, send, recv, c->n, c->dt, op));
    compare(what, recv, ref, c->n, c->dt, c->exact || exact_backend);
    same_on_all_ranks(what, recv, bytes);
    if (!c->inplace)
        release(recv, c->reg);
    release(send, c->reg);
    release(ref, 0);
}

static void test_reduce_scatter(const cfg *c) {
    size_t esz = sov_dtype_size(c->dt), bytes = c->n * esz;
    void *send = buffer(bytes * (size_t)size, c->reg), *ref = buffer(bytes, 0);
    void *recv = c->inplace ? (char *)send + (size_t)rank * bytes : buffer(bytes, c->reg);
    for (size_t i = 0; i < c->n * (size_t)size; i++)
        store(send, i, c->dt, value(rank, i, c->dt, c->exact));
    for (size_t i = 0; i < c->n; i++)
        reference(ref, i, (size_t)rank * c->n + i, c->dt, SOV_SUM, c->exact);
    char what[160];
    describe(what, sizeof what, "reduce_scatter-sum", c, "");
    check_status(what, sov_comm_reduce_scatter(comm, send, recv, c->n, c->dt, SOV_SUM));
    compare(what, recv, ref, c->n, c->dt, c->exact || exact_backend);
    if (!c->inplace)
        release(recv, c->reg);
    release(send, c->reg);
    release(ref, 0);
}

static void test_allgather(const cfg *c) {
    size_t esz = sov_dtype_size(c->dt), bytes = c->n * esz;
    void *recv = buffer(bytes * (size_t)size, c->reg), *ref = buffer(bytes * (size_t)size, 0);
    void *send = c->inplace ? (char *)recv + (size_t)rank * bytes : buffer(bytes, c->reg);
    for (size_t i = 0; i < c->n; i++)
        store(send, i, c->dt, value(rank, i, c->dt, c->exact));
    for (int r = 0; r < size; r++)
        for (size_t i = 0; i < c->n; i++)
            store(ref, (size_t)r * c->n + i, c->dt, value(r, i, c->dt, c->exact));
    char what[160];
    describe(what, sizeof what, "allgather", c, "");
    check_status(what, sov_comm_allgather(comm, send, recv, c->n, c->dt));
    compare(what, recv, ref, c->n * (size_t)size, c->dt, 1);
    if (!c->inplace)
        release(send, c->reg);
    release(recv, c->reg);
    release(ref, 0);
}

static void test_broadcast(const cfg *c, int root) {
    size_t esz = sov_dtype_size(c->dt), bytes = c->n * esz;
    void *buf = buffer(bytes, c->reg), *ref = buffer(bytes, 0);
    for (size_t i = 0; i < c->n; i++) {
        store(buf, i, c->dt, value(rank == root ? root : rank + 100, i, c->dt, c->exact));
        store(ref, i, c->dt, value(root, i, c->dt, c->exact));
    }
    char what[160], extra[32];
    snprintf(extra, sizeof extra, " root=%d", root);
    describe(what, sizeof what, "broadcast", c, extra);
    check_status(what, sov_comm_broadcast(comm, buf, c->n, c->dt, root));
    compare(what, buf, ref, c->n, c->dt, 1);
    release(buf, c->reg);
    release(ref, 0);
}

/* Several asynchronous allreduces in flight at once, waited for in reverse order. The buffers are allocated before
 * the first is issued and freed after the last wait, since sov_comm_alloc and sov_comm_free wait for the
 * collectives in flight. Then one large allreduce is issued and a buffer allocated and freed while it runs, which
 * must be safe (the TSan build checks that the progress thread and this one do not race on the backend's buffer
 * table). */
static void test_async(void) {
    enum { K = 7 };
    size_t counts[K] = {1, 100, 5000, 70001, 3, 40000, 1 << 20}; /* the last still runs as the alloc is called */
    void *bufs[K], *refs[K];
    sov_request *reqs[K];
    for (int k = 0; k < K; k++) {
        bufs[k] = buffer(counts[k] * 4, gpu || k % 2);
        refs[k] = buffer(counts[k] * 4, 0);
        for (size_t i = 0; i < counts[k]; i++) {
            store(bufs[k], i, SOV_F32, value(rank, i + (size_t)k, SOV_F32, 1));
            reference(refs[k], i, i + (size_t)k, SOV_F32, SOV_SUM, 1);
        }
    }
    for (int k = 0; k < K - 1; k++)
        check_status("iallreduce", sov_comm_iallreduce(comm, bufs[k], bufs[k], counts[k], SOV_F32, SOV_SUM, &reqs[k]));
    int done = 0;
    check_status("test", sov_comm_test(reqs[0], &done));
    for (int k = K - 2; k >= 0; k--) {
        check_status("wait", sov_comm_wait(reqs[k]));
        compare("async allreduce", bufs[k], refs[k], counts[k], SOV_F32, 1);
    }
    check_status("iallreduce", sov_comm_iallreduce(comm, bufs[K - 1], bufs[K - 1], counts[K - 1], SOV_F32, SOV_SUM,
                                                   &reqs[K - 1]));
    release(buffer(4096, 1), 1);
    check_status("wait", sov_comm_wait(reqs[K - 1]));
    compare("async allreduce beside an alloc", bufs[K - 1], refs[K - 1], counts[K - 1], SOV_F32, 1);
    for (int k = 0; k < K; k++) {
        release(bufs[k], gpu || k % 2);
        release(refs[k], 0);
    }
    sov_request *b;
    check_status("ibarrier", sov_comm_ibarrier(comm, &b));
    check_status("wait barrier", sov_comm_wait(b));
    checks++;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    sov_world world;
    sov_comm_config cfg0 = {.timeout_s = 60};
    if (argc < 2 || sov_comm_backend_parse(argv[1], &cfg0.backend) != SOV_OK) {
        fprintf(stderr, "usage: comm_check self|shm|mpi|hier|nccl|tcp\n");
        return 2;
    }
    check_status("world", sov_world_from_env(&world));
    if (cfg0.backend == SOV_COMM_NCCL) {
        char why[256];
        int devices = sov_host_gpus(sov_gpu_count(why, sizeof why));
        if (devices < world.local_size) {
            if (rank == 0)
                printf("SKIP: nccl needs a GPU per rank: %d rank(s) here, %d GPU(s) (%s)\n", world.local_size, devices,
                       why);
            MPI_Finalize();
            return 77;
        }
        gpu = 1;
        cfg0.gpu = 1;
    }
    check_status("sov_comm_init", sov_comm_init(&comm, &world, &cfg0));
    exact_backend = cfg0.backend == SOV_COMM_SHM || cfg0.backend == SOV_COMM_SELF;
    const size_t counts[] = {0, 1, 2, 7, 61, 257, 1031, 4099, 10007, 100003};
    const sov_dtype dtypes[] = {SOV_F32, SOV_BF16, SOV_F16, SOV_F64, SOV_U8};
    for (size_t d = 0; d < sizeof dtypes / sizeof *dtypes; d++)
        for (size_t k = 0; k < sizeof counts / sizeof *counts; k++)
            for (int mode = 0; mode < 8; mode++) {
                cfg c = {.dt = dtypes[d], .n = counts[k], .exact = mode & 1, .reg = (mode >> 1) & 1,
                         .inplace = (mode >> 2) & 1};
                if (c.dt == SOV_U8) {
                    if (c.exact) test_allreduce(&c, SOV_SUM);
                } else {
                    test_allreduce(&c, SOV_SUM);
                    test_allreduce(&c, SOV_AVG);
                    test_allreduce(&c, SOV_MAX);
                }
                if (c.dt != SOV_U8 && c.n <= 10007)
                    test_reduce_scatter(&c);
                test_allgather(&c);
                if (!c.inplace)
                    test_broadcast(&c, (int)(k % (size_t)size));
            }
    test_async();
    check_status("barrier", sov_comm_barrier(comm));
    int total_fail = 0, total_checks = 0;
    MPI_Allreduce(&failures, &total_fail, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&checks, &total_checks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("comm_check %s, %d ranks: %d checks, %d failed\n", argv[1], size, total_checks, total_fail);
    sov_comm_destroy(comm);
    MPI_Finalize();
    return total_fail ? 1 : 0;
}
