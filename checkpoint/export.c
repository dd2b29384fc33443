/* export.c: the parameters of a checkpoint as a plain safetensors file (the open exit path).
 * safetensors: 8-byte little-endian header length, a JSON header mapping each tensor name to its dtype, shape and
 * [begin, end) byte offsets in the data that follows, padded with spaces to a multiple of 8, then the data. */
#include "ckpt.h"
#include "fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static json_t *header_json(const sov_ckpt *c, size_t params, sov_status *st) {
    json_t *h = json_object(), *t;
    size_t i, pos = 0;
    json_array_foreach(json_object_get(sov_ckpt_manifest(c), "tensors"), i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        json_int_t off = json_integer_value(json_object_get(t, "offset")), cnt = json_integer_value(json_object_get(t, "count"));
        json_t *shape = json_object_get(t, "shape");
        if (!name || off < 0 || cnt < 1 || (size_t)(off + cnt) > params || !json_is_array(shape)) {
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
    size_t n = sov_ckpt_buffer_count(c, "params");
    if (n == 0)
        return sov_fail(SOV_ERR_FORMAT, "%s: no \"params\" buffer to export", sov_ckpt_path(c));
    float *params = sov_malloc(n * sizeof(float));
    if (!params)
        return SOV_ERR_NOMEM;
    sov_status st = sov_ckpt_read_buffer(c, "params", params, n);
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
