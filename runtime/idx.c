/* idx.c: IDX (MNIST-format) files, read through zlib so gzip'd and plain files both work. */
#include "data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* Largest payload we accept: bounds the allocation before any data has been read. */
#define IDX_MAX_BYTES ((uint64_t)1 << 32)

/* Reads exactly `n` bytes. Returns the count read; sets *zerr to zlib's message on a decompression error. */
static size_t read_full(gzFile f, void *buf, size_t n, const char **zerr) {
    size_t got = 0;
    while (got < n) {
        size_t want = n - got > (1u << 30) ? (1u << 30) : n - got;
        int r = gzread(f, (char *)buf + got, (unsigned)want);
        if (r <= 0) {
            int code;
            const char *msg = gzerror(f, &code);
            if (code != Z_OK)
                *zerr = msg;
            break;
        }
        got += (size_t)r;
    }
    return got;
}

static sov_status read_header(gzFile f, const char *path, int ndim, uint32_t *dims, uint64_t *bytes) {
    unsigned char magic[4];
    const char *zerr = NULL;
    if (read_full(f, magic, 4, &zerr) != 4)
        return sov_fail(SOV_ERR_FORMAT, "%s: truncated IDX file: no 4-byte header%s%s", path, zerr ? ": " : "",
                        zerr ? zerr : "");
    if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != ndim)
        return sov_fail(SOV_ERR_FORMAT,
                        "%s: not an IDX file of unsigned bytes with %d dimensions (magic %02x %02x %02x %02x, "
                        "expected 00 00 08 %02x)",
                        path, ndim, magic[0], magic[1], magic[2], magic[3], ndim);
    *bytes = 1;
    for (int i = 0; i < ndim; i++) {
        unsigned char b[4];
        if (read_full(f, b, 4, &zerr) != 4)
            return sov_fail(SOV_ERR_FORMAT, "%s: truncated IDX header: dimension %d missing", path, i);
        dims[i] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
        if (dims[i] == 0)
            return sov_fail(SOV_ERR_FORMAT, "%s: IDX dimension %d is zero", path, i);
        *bytes *= dims[i];
        if (*bytes > IDX_MAX_BYTES)
            return sov_fail(SOV_ERR_FORMAT, "%s: IDX dimensions describe more than %llu bytes: not a dataset file",
                            path, (unsigned long long)IDX_MAX_BYTES);
    }
    return SOV_OK;
}

static sov_status read_payload(gzFile f, const char *path, uint64_t bytes, uint8_t **data) {
    uint8_t *buf = sov_malloc((size_t)bytes);
    if (!buf)
        return SOV_ERR_NOMEM;
    const char *zerr = NULL;
    size_t got = read_full(f, buf, (size_t)bytes, &zerr);
    if (got != bytes) {
        free(buf);
        return sov_fail(SOV_ERR_FORMAT, "%s: truncated IDX file: header promises %llu data bytes, found %zu%s%s%s",
                        path, (unsigned long long)bytes, got, zerr ? " (zlib: " : "", zerr ? zerr : "", zerr ? ")" : "");
    }
    char extra;
    if (read_full(f, &extra, 1, &zerr) != 0 || zerr) {
        free(buf);
        return sov_fail(SOV_ERR_FORMAT, "%s: %s after the %llu data bytes the header promises", path,
                        zerr ? zerr : "trailing data", (unsigned long long)bytes);
    }
    *data = buf;
    return SOV_OK;
}

sov_status sov_idx_read(const char *path, int ndim, uint8_t **data, uint32_t *dims) {
    gzFile f = gzopen(path, "rb");
    if (!f)
        return sov_fail(SOV_ERR_IO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
    uint64_t bytes = 0;
    sov_status st = read_header(f, path, ndim, dims, &bytes);
    if (st == SOV_OK)
        st = read_payload(f, path, bytes, data);
    gzclose(f);
    return st;
}

/* Finds `<dir>/<name>.gz` or `<dir>/<name>`. */
static sov_status find_file(const char *dir, const char *name, char *out, size_t cap) {
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return sov_fail(SOV_ERR_IO, "data directory %s: %s (install Debian's dataset-fashion-mnist or pass --data DIR)",
                        dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return sov_fail(SOV_ERR_IO, "data directory %s is not a directory", dir);
    snprintf(out, cap, "%s/%s.gz", dir, name);
    if (stat(out, &sb) == 0)
        return SOV_OK;
    snprintf(out, cap, "%s/%s", dir, name);
    if (stat(out, &sb) == 0)
        return SOV_OK;
    return sov_fail(SOV_ERR_IO, "%s/%s.gz: no such file (nor without .gz) in the data directory", dir, name);
}

sov_status sov_mnist_load(const char *dir, const char *split, sov_dataset *ds) {
    char img_path[4096], lbl_path[4096], name[64];
    uint32_t img_dims[3], lbl_dims[1];
    memset(ds, 0, sizeof *ds);
    snprintf(name, sizeof name, "%s-images-idx3-ubyte", split);
    SOV_CHECK(find_file(dir, name, img_path, sizeof img_path));
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte", split);
    SOV_CHECK(find_file(dir, name, lbl_path, sizeof lbl_path));
    SOV_CHECK(sov_idx_read(img_path, 3, &ds->pixels, img_dims));
    sov_status st = sov_idx_read(lbl_path, 1, &ds->labels, lbl_dims);
    if (st != SOV_OK) {
        sov_dataset_free(ds);
        return st;
    }
    ds->count = (int)img_dims[0];
    ds->dim = (int)(img_dims[1] * img_dims[2]);
    ds->classes = 10;
    if (lbl_dims[0] != img_dims[0]) {
        sov_dataset_free(ds);
        return sov_fail(SOV_ERR_FORMAT, "%s has %u labels but %s has %u images", lbl_path, lbl_dims[0], img_path,
                        img_dims[0]);
    }
    for (int i = 0; i < ds->count; i++) {
        if (ds->labels[i] >= ds->classes) {
            int bad = ds->labels[i];
            sov_dataset_free(ds);
            return sov_fail(SOV_ERR_FORMAT, "%s: label %d of sample %d is outside 0..9", lbl_path, bad, i);
        }
    }
    return SOV_OK;
}

void sov_dataset_free(sov_dataset *ds) {
    free(ds->pixels);
    free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

/* Fashion-MNIST training-set pixel mean and standard deviation (of pixel/255). */
#define PIXEL_MEAN 0.2860f
#define PIXEL_STD 0.3530f

void sov_dataset_gather(const sov_dataset *ds, const int32_t *indices, int n, float *x, int32_t *y) {
    const float scale = 1.0f / (255.0f * PIXEL_STD), shift = PIXEL_MEAN / PIXEL_STD;
    for (int i = 0; i < n; i++) {
        const uint8_t *src = ds->pixels + (size_t)indices[i] * (size_t)ds->dim;
        float *dst = x + (size_t)i * (size_t)ds->dim;
        for (int j = 0; j < ds->dim; j++)
            dst[j] = (float)src[j] * scale - shift;
        y[i] = ds->labels[indices[i]];
    }
}
