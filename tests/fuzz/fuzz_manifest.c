/* fuzz_manifest.c: libFuzzer target for the checkpoint reader (checkpoint/reader.c) through a damaged manifest.
 *
 * A private directory (made once) holds fixed data files built from two valid chunks, A (FIX_A_ELEMS f32
 * elements) and B (FIX_B_ELEMS elements' worth of 2-byte elements):
 *   rank-0.bin, rank-1.bin  A at 0, zeros, B at 4096 (format version 3's layout; 4464 bytes)
 *   v1.bin                  A at 0, B at 1136 (versions 1 and 2: back to back; 1504 bytes)
 *   damaged.bin             A's header over a garbage payload (1136 bytes)
 *   padding.bin             rank-0.bin with one byte of its padding set
 * The chunks hold pseudo-random bytes, which the encoder stores raw, so their sizes (header + raw bytes: 1136 and
 * 368) do not depend on its compression heuristics; the seeds in corpus/manifest rely on them.
 * Each input becomes that directory's manifest.json; the checkpoint is opened and, when it opens, verified, every
 * buffer it names read (when small enough to allocate), the parameters exported, and closed. Since a mutated
 * manifest nearly always fails its "manifest_xxh3" seal, an input whose seal does not match is run a second time
 * resealed, so that the fuzzer reaches the structure checks behind the seal. No input may crash, leak or hit UB.
 * Build and run: tests/fuzz/run.sh. */
#include <sovtrain/ckpt.h>
#include "codec.h"
#include "fsio.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX_A_ELEMS 256 /* chunk A: f32 */
#define FIX_B_ELEMS 64  /* chunk B: 2 * FIX_B_ELEMS bf16-like elements */
#define FIX_GAP 4096     /* where B starts in a version-3 file */
#define MAX_READ_ELEMS ((size_t)1 << 22)

static char dir[256];
static size_t fix_a_bytes, fix_b_bytes; /* encoded sizes of chunks A and B (rank-0.bin is A then B) */

static void write_file(const char *name, const void *data, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || sov_write_all(fd, data, n, path) != SOV_OK) {
        fprintf(stderr, "fuzz_manifest: cannot write %s\n", path);
        abort();
    }
    close(fd);
}

static void remove_fixture(void) { sov_remove_dir(dir); }

/* Makes the directory and its data files. */
static void build_fixture(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/fuzz_manifest.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("fuzz_manifest: mkdtemp");
        abort();
    }
    static uint32_t a[FIX_A_ELEMS];
    static uint16_t b[2 * FIX_B_ELEMS];
    uint32_t x = 12345;
    for (int i = 0; i < FIX_A_ELEMS; i++) {
        x = x * 1103515245u + 12345u;
        a[i] = x ^ x >> 16;
    }
    for (int i = 0; i < 2 * FIX_B_ELEMS; i++)
        b[i] = (uint16_t)((x = x * 1103515245u + 12345u) >> 16);
    static uint8_t r0[FIX_GAP + SOV_CHUNK_HEADER_BYTES + sizeof b], v1[2 * SOV_CHUNK_HEADER_BYTES + sizeof a + sizeof b];
    sov_codec *c;
    if (sov_codec_create(&c, 4096) != SOV_OK ||
        sov_chunk_encode(c, a, sizeof a, 4, SOV_TRANSFORM_FLOAT, v1, &fix_a_bytes) != SOV_OK ||
        sov_chunk_encode(c, b, sizeof b, 2, SOV_TRANSFORM_FLOAT, v1 + fix_a_bytes, &fix_b_bytes) != SOV_OK) {
        fprintf(stderr, "fuzz_manifest: %s\n", sov_last_error());
        abort();
    }
    sov_codec_destroy(c);
    if (fix_a_bytes != SOV_CHUNK_HEADER_BYTES + sizeof a || fix_b_bytes != SOV_CHUNK_HEADER_BYTES + sizeof b)
        fprintf(stderr, "fuzz_manifest: warning: the fixture's chunks were compressed (%zu and %zu bytes); the seeds "
                "in corpus/manifest expect them raw\n", fix_a_bytes, fix_b_bytes);
    write_file("v1.bin", v1, fix_a_bytes + fix_b_bytes);
    memcpy(r0, v1, fix_a_bytes);
    memcpy(r0 + FIX_GAP, v1 + fix_a_bytes, fix_b_bytes);
    write_file("rank-0.bin", r0, FIX_GAP + fix_b_bytes);
    write_file("rank-1.bin", r0, FIX_GAP + fix_b_bytes);
    r0[FIX_GAP - 96] = 1;
    write_file("padding.bin", r0, FIX_GAP + fix_b_bytes);
    for (size_t i = SOV_CHUNK_HEADER_BYTES; i < fix_a_bytes; i++)
        v1[i] = (uint8_t)((x = x * 1103515245u + 12345u) >> 24);
    write_file("damaged.bin", v1, fix_a_bytes);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    build_fixture();
    atexit(remove_fixture);
    return 0;
}

static void exercise(void) {
    sov_ckpt *c;
    if (sov_ckpt_open(dir, &c) != SOV_OK)
        return;
    (void)sov_ckpt_verify(c);
    size_t all = 0;
    for (int i = 0; i < sov_ckpt_num_tensors(c); i++) {
        sov_ckpt_tensor_info info;
        if (sov_ckpt_tensor_at(c, i, &info) != SOV_OK)
            abort(); /* every index below the count is a tensor */
        size_t count = 1;
        for (int d = 0; d < info.ndim; d++)
            count = info.shape[d] > (int64_t)MAX_READ_ELEMS ? MAX_READ_ELEMS + 1 : count * (size_t)info.shape[d];
        all += count;
        if (count > MAX_READ_ELEMS)
            continue;
        uint64_t *dst = malloc((count ? count : 1) * sizeof *dst); /* room for the widest dtype */
        if (!dst)
            abort();
        (void)sov_ckpt_read(c, info.name, info.dtype, dst);
        (void)sov_ckpt_read(c, info.name, info.dtype == SOV_F32 ? SOV_BF16 : SOV_F32, dst);
        if (info.ndim > 0 && info.shape[0] > 1) { /* the back half of the first dimension: a slice */
            int64_t off[SOV_CKPT_MAX_DIMS] = {0}, shape[SOV_CKPT_MAX_DIMS];
            memcpy(shape, info.shape, sizeof shape);
            off[0] = info.shape[0] / 2;
            shape[0] = info.shape[0] - off[0];
            (void)sov_ckpt_read_slice(c, info.name, info.dtype, off, shape, dst);
        }
        free(dst);
    }
    if (all > 0 && all <= MAX_READ_ELEMS) {
        char out[512];
        snprintf(out, sizeof out, "%s/export.safetensors", dir);
        (void)sov_ckpt_export_safetensors(c, out);
        unlink(out);
    }
    sov_ckpt_close(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_file("manifest.json", data, size);
    exercise();
    char *text = malloc(size + 1); /* resealed, when the seal is there but wrong */
    if (!text)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';
    if (sov_manifest_seal(text, size) == SOV_OK && memcmp(text, data, size) != 0) {
        write_file("manifest.json", text, size);
        exercise();
    }
    free(text);
    return 0;
}
