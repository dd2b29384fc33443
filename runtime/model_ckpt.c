/* model_ckpt.c: see model_ckpt.h. */
#include "model_ckpt.h"

#include <stdio.h>
#include <string.h>

#define MODEL_MAX_DIMS ((int)(sizeof ((sov_tensor *)0)->shape / sizeof ((sov_tensor *)0)->shape[0]))

sov_status sov_model_ckpt_tensors(const sov_model *m, const float *params, sov_ckpt_tensor *out) {
    size_t next = 0;
    for (int i = 0; i < m->num_tensors; i++) {
        const sov_tensor *t = &m->tensors[i];
        if (t->ndim < 0 || t->ndim > MODEL_MAX_DIMS)
            return sov_fail(SOV_ERR_INTERNAL, "model %s: tensor %s has %d dimensions", m->ops->name, t->name, t->ndim);
        if (t->offset != next)
            return sov_fail(SOV_ERR_INTERNAL, "model %s: tensor %s is not where the one before it ends", m->ops->name,
                            t->name);
        out[i] = (sov_ckpt_tensor){.name = t->name, .dtype = SOV_F32, .ndim = t->ndim, .data = params + t->offset};
        memcpy(out[i].shape, t->shape, (size_t)t->ndim * sizeof *t->shape);
        next += t->count;
    }
    if (next != m->num_params)
        return sov_fail(SOV_ERR_INTERNAL, "model %s: its tensors hold %zu of its %zu parameters", m->ops->name, next,
                        m->num_params);
    return SOV_OK;
}

/* "[a, b, c]" into out. */
static void shape_text(int ndim, const int64_t *shape, char *out, size_t cap) {
    size_t len = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && len < cap; d++)
        len += (size_t)snprintf(out + len, cap - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (len < cap)
        snprintf(out + len, cap - len, "]");
}

sov_status sov_model_ckpt_check(const sov_ckpt *c, const sov_model *m) {
    for (int i = 0; i < m->num_tensors; i++) {
        const sov_tensor *t = &m->tensors[i];
        sov_ckpt_tensor_info info;
        if (sov_ckpt_tensor_find(c, t->name, &info) != SOV_OK)
            return sov_fail(SOV_ERR_INVALID, "%s has no tensor \"%s\": a checkpoint of another model?",
                            sov_ckpt_path(c), t->name);
        int same = info.dtype == SOV_F32 && info.ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = info.shape[d] == t->shape[d];
        if (!same) {
            char have[160], want[160];
            shape_text(info.ndim, info.shape, have, sizeof have);
            shape_text(t->ndim, t->shape, want, sizeof want);
            return sov_fail(SOV_ERR_INVALID, "%s: tensor \"%s\" is %s %s, the model's is f32 %s: a checkpoint of "
                            "another model shape?", sov_ckpt_path(c), t->name, sov_dtype_name(info.dtype), have, want);
        }
    }
    return SOV_OK;
}

void sov_model_ckpt_requests(const sov_model *m, float *params, sov_ckpt_read_request *out) {
    for (int i = 0; i < m->num_tensors; i++)
        out[i] = (sov_ckpt_read_request){.name = m->tensors[i].name, .dtype = SOV_F32,
                                         .dst = params + m->tensors[i].offset};
}
