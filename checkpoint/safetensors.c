/* safetensors.c: the parameters of a checkpoint as a plain safetensors file (the open exit path), and a model
 * seeded from one (the way in).
 * safetensors: 8-byte little-endian header length, a JSON header mapping each tensor name to its dtype, shape and
 * [begin, end) byte offsets in the data that follows, padded with spaces to a multiple of 8, then the data. */
#include <sovtrain/ckpt.h>
#include "codec.h"
#include "fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static json_t *header_json(const sov_ckpt *c, size_t params, sov_status *st) {
    json_t *h = json_object(), *t;
    size_t i, pos = 0;
    json_array_foreach(json_object_get(sov_ckpt_manifest(c), "tensors"), i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        json_int_t off = json_integer_value(json_object_get(t, "offset")), cnt = json_integer_value(json_object_get(t, "count"));
        json_t *shape = json_object_get(t, "shape");
        if (!name || off < 0 || cnt < 1 || (uint64_t)off > params || (uint64_t)cnt > params - (uint64_t)off ||
            !json_is_array(shape) || json_object_get(h, name)) { /* in range, and no name twice */
            *st = sov_fail(SOV_ERR_FORMAT, "%s/manifest.json: tensor entry %zu is malformed", sov_ckpt_path(c), i);
            json_decref(h);
            return NULL;
        }
        json_object_set_new(h, name, json_pack("{s:s, s:O, s:[I,I]}", "dtype", "F32", "shape", shape, "data_offsets",
                                                (json_int_t)pos, (json_int_t)(pos + (size_t)cnt * 4)));
        pos += (size_t)cnt * 4;
    }
    char step[32];
    snprintf(step, sizeof step, "%ld", sov_ckpt_step(c));
    json_object_set_new(h, "__metadata__", json_pack("{s:s, s:s}", "format", "pt", "sovtrain_step", step));
    *st = SOV_OK;
    return h;
}

sov_status sov_ckpt_export_safetensors(sov_ckpt *c, const char *out_path) {
    size_t n = sov_ckpt_buffer_count(c, "params"), stored = 0, i;
    if (n == 0)
        return sov_fail(SOV_ERR_FORMAT, "%s: no \"params\" buffer to export", sov_ckpt_path(c));
    json_t *f;
    json_array_foreach(json_object_get(sov_ckpt_manifest(c), "files"), i, f)
        stored += (size_t)json_integer_value(json_object_get(f, "bytes"));
    /* every chunk of at most chunk_bytes costs a header: a count the files cannot hold is refused before allocating */
    size_t chunk = (size_t)json_integer_value(json_object_get(sov_ckpt_manifest(c), "chunk_bytes"));
    if (chunk < 4 || n / (chunk / 4) * SOV_CHUNK_HEADER_BYTES > stored)
        return sov_fail(SOV_ERR_FORMAT, "%s: \"params\" claims %zu elements but the files hold %zu bytes",
                        sov_ckpt_path(c), n, stored);
    float *params = sov_malloc(n * sizeof(float));
    if (!params)
        return SOV_ERR_NOMEM;
    sov_status st = sov_ckpt_read_buffer(c, "params", SOV_CKPT_F32, params, n);
    json_t *h = st == SOV_OK ? header_json(c, n, &st) : NULL;
    char *text = h ? json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(h);
    if (st == SOV_OK && !text)
        st = sov_fail(SOV_ERR_NOMEM, "cannot serialise the safetensors header");
    int fd = -1;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    if (st == SOV_OK && (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        st = sov_fail(SOV_ERR_IO, "creating %s: %s", tmp, strerror(errno));
    if (st == SOV_OK) {
        size_t len = strlen(text), padded = (len + 7) / 8 * 8;
        uint8_t size_le[8];
        for (int i = 0; i < 8; i++)
            size_le[i] = (uint8_t)((uint64_t)padded >> 8 * i);
        st = sov_write_all(fd, size_le, 8, tmp);
        if (st == SOV_OK)
            st = sov_write_all(fd, text, len, tmp);
        if (st == SOV_OK && padded > len)
            st = sov_write_all(fd, "        ", padded - len, tmp);
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(sov_ckpt_manifest(c), "tensors"), i, t) {
            if (st != SOV_OK)
                break;
            json_int_t off = json_integer_value(json_object_get(t, "offset"));
            json_int_t cnt = json_integer_value(json_object_get(t, "count"));
            st = sov_write_all(fd, params + off, (size_t)cnt * 4, tmp); /* x86-64 floats are little-endian already */
        }
        if (st == SOV_OK && fsync(fd) != 0)
            st = sov_fail(SOV_ERR_IO, "fsync %s: %s", tmp, strerror(errno));
        close(fd);
        if (st == SOV_OK && rename(tmp, out_path) != 0)
            st = sov_fail(SOV_ERR_IO, "renaming %s to %s: %s", tmp, out_path, strerror(errno));
        if (st != SOV_OK)
            unlink(tmp);
    }
    free(text);
    free(params);
    return st;
}

/* ---- import ---- */

#define ST_MAX_HEADER ((uint64_t)100 << 20)

static sov_status st_bad(const char *path, const char *what, const char *name) {
    return sov_fail(SOV_ERR_FORMAT, "%s: %s%s%s", path, what, name ? ": " : "", name ? name : "");
}

/* Checks one header entry against the model tensor it must fill; returns its [begin, end) in the data. */
static sov_status st_entry(const char *path, json_t *e, const sov_tensor *t, uint64_t data_len, uint64_t *begin) {
    const char *dtype = json_string_value(json_object_get(e, "dtype"));
    json_t *shape = json_object_get(e, "shape"), *offs = json_object_get(e, "data_offsets");
    if (!dtype || strcmp(dtype, "F32") != 0)
        return st_bad(path, "only F32 tensors can seed a model, not this one", t->name);
    if (!json_is_array(shape) || (int)json_array_size(shape) != t->ndim)
        return st_bad(path, "tensor has a different number of dimensions than the model's", t->name);
    for (int d = 0; d < t->ndim; d++)
        if (json_integer_value(json_array_get(shape, (size_t)d)) != t->shape[d])
            return st_bad(path, "tensor shape differs from the model's", t->name);
    json_t *b = json_array_get(offs, 0), *en = json_array_get(offs, 1);
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(b) || !json_is_integer(en) ||
        json_integer_value(b) < 0 || json_integer_value(en) < json_integer_value(b) ||
        (uint64_t)json_integer_value(en) > data_len ||
        (uint64_t)(json_integer_value(en) - json_integer_value(b)) != t->count * 4)
        return st_bad(path, "data_offsets are malformed, out of the file or of the wrong size", t->name);
    *begin = (uint64_t)json_integer_value(b);
    return SOV_OK;
}

sov_status sov_safetensors_load(const char *path, const sov_tensor *tensors, int num_tensors, float *params) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    uint8_t len_le[8];
    sov_status st = fstat(fd, &sb) == 0 ? sov_pread_all(fd, len_le, 8, 0, path) : sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)len_le[i] << 8 * i;
    if (st == SOV_OK && (hlen > ST_MAX_HEADER || 8 + hlen > (uint64_t)sb.st_size))
        st = st_bad(path, "not a safetensors file (its header length exceeds the file)", NULL);
    char *text = st == SOV_OK ? sov_malloc(hlen + 1) : NULL;
    if (st == SOV_OK && !text)
        st = SOV_ERR_NOMEM;
    if (st == SOV_OK)
        st = sov_pread_all(fd, text, hlen, 8, path);
    json_t *h = NULL;
    if (st == SOV_OK) {
        text[hlen] = '\0';
        json_error_t err;
        if (!(h = json_loadb(text, hlen, 0, &err)) || !json_is_object(h))
            st = sov_fail(SOV_ERR_FORMAT, "%s: the header is not JSON (%s)", path, err.text);
    }
    uint64_t data_len = st == SOV_OK ? (uint64_t)sb.st_size - 8 - hlen : 0;
    for (int t = 0; t < num_tensors && st == SOV_OK; t++) {
        json_t *e = json_object_get(h, tensors[t].name);
        uint64_t begin = 0;
        if (!e)
            st = st_bad(path, "lacks a tensor the model has", tensors[t].name);
        if (st == SOV_OK)
            st = st_entry(path, e, &tensors[t], data_len, &begin);
        if (st == SOV_OK)
            st = sov_pread_all(fd, params + tensors[t].offset, tensors[t].count * 4, (off_t)(8 + hlen + begin), path);
    }
    if (st == SOV_OK && json_object_size(h) - (json_object_get(h, "__metadata__") ? 1 : 0) != (size_t)num_tensors)
        st = st_bad(path, "holds tensors the model does not have (a different model?)", NULL);
    json_decref(h);
    free(text);
    close(fd);
    return st;
}
