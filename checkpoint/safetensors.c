/* safetensors.c: a checkpoint's tensors as a plain safetensors file (the open exit path), and tensors read from
 * one (the way in: a model seeded from an export or from another framework).
 * safetensors: 8-byte little-endian header length, a JSON header mapping each tensor name to its dtype, shape and
 * [begin, end) byte offsets in the data that follows, padded with spaces to a multiple of 8, then the data. */
#include "catalog.h"
#include "fsio.h"
#include <sovtrain/ckpt.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* safetensors' names of the dtypes. */
static const char *st_dtype(sov_dtype dt) {
    static const char *names[SOV_NUM_DTYPES] = {
        [SOV_F32] = "F32", [SOV_BF16] = "BF16", [SOV_F16] = "F16", [SOV_F64] = "F64", [SOV_U8] = "U8",
        [SOV_I64] = "I64", [SOV_I32] = "I32", [SOV_I16] = "I16", [SOV_I8] = "I8",    [SOV_BOOL] = "BOOL"};
    return (unsigned)dt < SOV_NUM_DTYPES ? names[dt] : "?";
}

static size_t tensor_bytes(const sov_cat_tensor *t) {
    return (size_t)sov_box_volume(t->ndim, t->shape) * sov_dtype_size(t->dtype);
}

/* The header: every tensor in manifest order, its data right after the one before. */
static char *header_text(const sov_ckpt *c) {
    const sov_catalog *cat = sov_ckpt_catalog(c);
    json_t *h = json_object();
    size_t pos = 0;
    for (int i = 0; i < cat->ntensors; i++) {
        const sov_cat_tensor *t = &cat->tensors[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_object_set_new(h, t->name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_dtype(t->dtype), "shape", shape,
                                                  "data_offsets", (json_int_t)pos,
                                                  (json_int_t)(pos + tensor_bytes(t))));
        pos += tensor_bytes(t);
    }
    char step[32];
    snprintf(step, sizeof step, "%ld", sov_ckpt_step(c));
    json_object_set_new(h, "__metadata__", json_pack("{s:s, s:s}", "format", "pt", "sovtrain_step", step));
    char *text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    return text;
}

/* One tensor, read whole and verified, appended to the file. */
static sov_status write_tensor(sov_ckpt *c, const sov_cat_tensor *t, int fd, const char *path) {
    size_t bytes = tensor_bytes(t);
    void *data = sov_malloc(bytes ? bytes : 1);
    if (!data)
        return sov_fail(SOV_ERR_NOMEM, "exporting tensor \"%s\" (%zu bytes): out of memory", t->name, bytes);
    sov_status st = sov_ckpt_read(c, t->name, t->dtype, data);
    if (st == SOV_OK)
        st = sov_write_all(fd, data, bytes, path); /* little-endian, as the checkpoint holds them and x86-64 too */
    free(data);
    return st;
}

static sov_status write_header(int fd, const char *text, const char *path) {
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    uint8_t size_le[8];
    for (int i = 0; i < 8; i++)
        size_le[i] = (uint8_t)((uint64_t)padded >> 8 * i);
    SOV_CHECK(sov_write_all(fd, size_le, 8, path));
    SOV_CHECK(sov_write_all(fd, text, len, path));
    return padded > len ? sov_write_all(fd, "        ", padded - len, path) : SOV_OK;
}

sov_status sov_ckpt_export_safetensors(sov_ckpt *c, const char *out_path) {
    const sov_catalog *cat = sov_ckpt_catalog(c);
    if (sov_catalog_find(cat, "__metadata__") >= 0) /* the key safetensors keeps for its metadata */
        return sov_fail(SOV_ERR_UNSUPPORTED, "%s: a tensor named \"__metadata__\" cannot be exported to safetensors",
                        sov_ckpt_path(c));
    char *text = header_text(c);
    if (!text)
        return sov_fail(SOV_ERR_NOMEM, "cannot serialise the safetensors header");
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    sov_status st = fd >= 0 ? write_header(fd, text, tmp) : sov_fail(SOV_ERR_IO, "creating %s: %s", tmp, strerror(errno));
    for (int i = 0; i < cat->ntensors && st == SOV_OK; i++) /* one tensor in memory at a time */
        st = write_tensor(c, &cat->tensors[i], fd, tmp);
    if (st == SOV_OK && fsync(fd) != 0)
        st = sov_fail(SOV_ERR_IO, "fsync %s: %s", tmp, strerror(errno));
    if (fd >= 0)
        close(fd);
    if (st == SOV_OK && rename(tmp, out_path) != 0)
        st = sov_fail(SOV_ERR_IO, "renaming %s to %s: %s", tmp, out_path, strerror(errno));
    if (st != SOV_OK && fd >= 0)
        unlink(tmp);
    free(text);
    return st;
}

/* ---- import ---- */

#define ST_MAX_HEADER ((uint64_t)100 << 20)

static sov_status st_bad(const char *path, const char *what, const char *name) {
    return sov_fail(SOV_ERR_FORMAT, "%s: %s%s%s", path, what, name ? ": " : "", name ? name : "");
}

/* Checks the header entry of tensor `name` against what the caller expects; returns its [begin, end) in the
 * data. */
static sov_status st_entry(const char *path, json_t *e, const char *name, sov_dtype dtype, int ndim,
                           const int64_t *shape, uint64_t data_len, uint64_t *begin) {
    const char *dt = json_string_value(json_object_get(e, "dtype"));
    json_t *shp = json_object_get(e, "shape"), *offs = json_object_get(e, "data_offsets");
    if (!dt || strcmp(dt, st_dtype(dtype)) != 0)
        return sov_fail(SOV_ERR_FORMAT, "%s: tensor \"%s\" is %s, not %s", path, name, dt ? dt : "?", st_dtype(dtype));
    if (!json_is_array(shp) || (int)json_array_size(shp) != ndim)
        return st_bad(path, "tensor has a different number of dimensions than the model's", name);
    for (int d = 0; d < ndim; d++)
        if (json_integer_value(json_array_get(shp, (size_t)d)) != shape[d])
            return st_bad(path, "tensor shape differs from the model's", name);
    int64_t count = sov_box_volume(ndim, shape);
    json_t *b = json_array_get(offs, 0), *en = json_array_get(offs, 1);
    if (count < 0 || !json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(b) ||
        !json_is_integer(en) || json_integer_value(b) < 0 || json_integer_value(en) < json_integer_value(b) ||
        (uint64_t)json_integer_value(en) > data_len ||
        (uint64_t)(json_integer_value(en) - json_integer_value(b)) != (uint64_t)count * sov_dtype_size(dtype))
        return st_bad(path, "data_offsets are malformed, out of the file or of the wrong size", name);
    *begin = (uint64_t)json_integer_value(b);
    return SOV_OK;
}

/* The file's JSON header and the length of the data after it. */
static sov_status st_header(int fd, const char *path, json_t **out, uint64_t *hlen_out, uint64_t *data_len) {
    struct stat sb;
    uint8_t len_le[8];
    if (fstat(fd, &sb) != 0)
        return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
    SOV_CHECK(sov_pread_all(fd, len_le, 8, 0, path));
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)len_le[i] << 8 * i;
    if (hlen > ST_MAX_HEADER || 8 + hlen > (uint64_t)sb.st_size)
        return st_bad(path, "not a safetensors file (its header length exceeds the file)", NULL);
    char *text = sov_malloc(hlen + 1);
    if (!text)
        return SOV_ERR_NOMEM;
    sov_status st = sov_pread_all(fd, text, hlen, 8, path);
    json_error_t err;
    if (st == SOV_OK && !(*out = json_loadb(text, hlen, 0, &err)))
        st = sov_fail(SOV_ERR_FORMAT, "%s: the header is not JSON (%s)", path, err.text);
    else if (st == SOV_OK && !json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        st = sov_fail(SOV_ERR_FORMAT, "%s: the header is JSON but not an object", path);
    }
    free(text);
    *hlen_out = hlen;
    *data_len = (uint64_t)sb.st_size - 8 - hlen;
    return st;
}

sov_status sov_safetensors_read(const char *path, const char *name, sov_dtype dtype, int ndim, const int64_t *shape,
                                void *dst) {
    if (ndim < 0 || ndim > SOV_CKPT_MAX_DIMS || sov_dtype_size(dtype) == 0)
        return sov_fail(SOV_ERR_INVALID, "reading \"%s\" from %s: bad dtype or number of dimensions", name, path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
    json_t *h = NULL, *e = NULL;
    uint64_t hlen = 0, data_len = 0, begin = 0;
    sov_status st = st_header(fd, path, &h, &hlen, &data_len);
    if (st == SOV_OK && !(e = json_object_get(h, name)))
        st = st_bad(path, "lacks a tensor the model has", name);
    if (st == SOV_OK)
        st = st_entry(path, e, name, dtype, ndim, shape, data_len, &begin);
    if (st == SOV_OK)
        st = sov_pread_all(fd, dst, (size_t)sov_box_volume(ndim, shape) * sov_dtype_size(dtype),
                           (off_t)(8 + hlen + begin), path);
    json_decref(h);
    close(fd);
    return st;
}
