/* test_nccl_order: a collective on the nccl backend starts only after the work its caller had issued on its own
 * stream when it called (sov_comm_set_stream; a CUDA event per collective). Exit 77 without a GPU.
 *
 * On one GPU an out-of-place allreduce of u8 is a copy. Each round keeps the caller's stream busy for a few
 * milliseconds (memsets of a scratch buffer), then fills the source with the round's byte, then reduces source
 * into destination. With the ordering the destination holds the round's byte; without it NCCL's own stream would
 * copy the source before the fill, which the test also shows happening (the control), so it can tell the two
 * apart. */
#include <sovtrain/comm.h>
#include "device.h"
#include <sovtrain/runtime.h>

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROUNDS = 5 };
static const size_t bytes = (size_t)256 << 20, scratch_bytes = (size_t)2 << 30, probe = (size_t)1 << 20;

static void die(const char *what) {
    fprintf(stderr, "test_nccl_order: %s: %s\n", what, sov_last_error());
    exit(1);
}

/* One round: busy stream, fill src with `value`, reduce into dst; the bytes of dst's first and last MiB that
 * are not `value`. */
static long round_trip(sov_device *dev, sov_comm *comm, uint8_t *scratch, uint8_t *src, uint8_t *dst, int value) {
    cudaStream_t stream = sov_device_stream(dev);
    for (int i = 0; i < 8; i++)
        cudaMemsetAsync(scratch, i, scratch_bytes, stream);
    cudaMemsetAsync(src, value, bytes, stream);
    if (sov_comm_allreduce(comm, src, dst, bytes, SOV_U8, SOV_SUM) != SOV_OK)
        die("allreduce");
    if (sov_device_sync(dev) != SOV_OK)
        die("sync");
    static uint8_t host[2][1 << 20];
    if (cudaMemcpy(host[0], dst, probe, cudaMemcpyDeviceToHost) != cudaSuccess ||
        cudaMemcpy(host[1], dst + bytes - probe, probe, cudaMemcpyDeviceToHost) != cudaSuccess)
        die("copy back");
    long wrong = 0;
    for (size_t i = 0; i < probe; i++)
        wrong += (host[0][i] != value) + (host[1][i] != value);
    return wrong;
}

int main(void) {
    char why[256];
    if (sov_gpu_count(why, sizeof why) < 1) {
        printf("SKIP: no usable GPU: %s\n", why);
        return 77;
    }
    sov_world world = {.rank = 0, .size = 1, .local_rank = 0, .local_size = 1, .source = "single"};
    sov_device *dev;
    sov_comm *comm;
    sov_comm_config cfg = {.backend = SOV_COMM_NCCL, .timeout_s = 60, .gpu = 1};
    if (sov_device_open(&dev, 0) != SOV_OK)
        die("device");
    if (sov_comm_init(&comm, &world, &cfg) != SOV_OK)
        die("nccl communicator of one rank (no MPI)");
    uint8_t *scratch = sov_device_alloc(dev, scratch_bytes), *src = sov_comm_alloc(comm, bytes),
            *dst = sov_comm_alloc(comm, bytes);
    if (!scratch || !src || !dst)
        die("allocation");
    int failed = 0, stale = 0;
    sov_comm_set_stream(comm, sov_device_stream(dev));
    for (int r = 1; r <= ROUNDS; r++) {
        long wrong = round_trip(dev, comm, scratch, src, dst, r);
        if (wrong) {
            printf("FAIL: round %d: %ld of %zu probed bytes were not yet written when NCCL read them\n", r, wrong,
                   2 * probe);
            failed++;
        }
    }
    sov_comm_set_stream(comm, NULL); /* the control: the collective no longer waits for the caller's stream */
    for (int r = ROUNDS + 1; r <= 2 * ROUNDS; r++)
        stale += round_trip(dev, comm, scratch, src, dst, r) != 0;
    printf("ordered by the caller's stream: %d of %d rounds read the fill; without it (control): %d of %d rounds "
           "read stale data\n", ROUNDS - failed, ROUNDS, stale, ROUNDS);
    sov_device_free(dev, scratch);
    sov_comm_free(comm, src);
    sov_comm_free(comm, dst);
    sov_comm_destroy(comm);
    sov_device_close(dev);
    printf("%d passed, %d failed\n", ROUNDS - failed, failed);
    return failed ? 1 : 0;
}
