/* model.c: the registry of built-in models and the flat buffers every model's tensors live in. */
#include "device.h"
#include <sovtrain/runtime.h>

#include <stdlib.h>
#include <string.h>

extern const sov_model_ops sov_mlp_ops;
extern const sov_model_ops sov_gpt_ops;

static const sov_model_ops *const builtin_models[] = {&sov_mlp_ops, &sov_gpt_ops};
#ifdef SOVTRAIN_HAVE_CUDA
extern const sov_model_ops sov_mlp_cuda_ops;
static const sov_model_ops *const cuda_models[] = {&sov_mlp_cuda_ops};
#endif

const sov_model_ops *sov_model_find(const char *name) {
    for (size_t i = 0; i < sizeof builtin_models / sizeof *builtin_models; i++)
        if (strcmp(builtin_models[i]->name, name) == 0)
            return builtin_models[i];
    return NULL;
}

const sov_model_ops *sov_model_find_cuda(const char *name) {
#ifdef SOVTRAIN_HAVE_CUDA
    for (size_t i = 0; i < sizeof cuda_models / sizeof *cuda_models; i++)
        if (strcmp(cuda_models[i]->name, name) == 0)
            return cuda_models[i];
#endif
    (void)name;
    return NULL;
}

static void *host_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    return sov_aligned_alloc(bytes);
}

static void host_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

sov_status sov_model_create(const char *name, const sov_model_config *cfg, const sov_allocator *allocator,
                            sov_model **out) {
    const sov_model_ops *ops = sov_model_find(name);
    if (!ops)
        return sov_fail(SOV_ERR_INVALID, "unknown model \"%s\" (built-in: mlp, gpt)", name);
    if (cfg->device && !(ops = sov_model_find_cuda(name)))
        return sov_fail(SOV_ERR_UNSUPPORTED, "the %s model has no CUDA implementation yet (only mlp has); train it "
                        "with --device cpu", name);
    sov_model *m = sov_calloc(1, sizeof *m);
    if (!m)
        return SOV_ERR_NOMEM;
    m->ops = ops;
    m->allocator = allocator ? *allocator : (sov_allocator){.alloc = host_alloc, .free = host_free};
    sov_status st = ops->create(cfg, m);
    if (st == SOV_OK) {
        m->params = m->allocator.alloc(m->allocator.ctx, m->num_params * sizeof(float));
        m->grads = m->allocator.alloc(m->allocator.ctx, m->num_params * sizeof(float));
        if (!m->params || !m->grads)
            st = SOV_ERR_NOMEM;
    }
    if (st != SOV_OK) {
        sov_model_destroy(m);
        return st;
    }
    *out = m;
    return SOV_OK;
}

void sov_model_destroy(sov_model *m) {
    if (!m)
        return;
    if (m->ops && m->impl)
        m->ops->destroy(m);
    free(m->tensors);
    if (m->params)
        m->allocator.free(m->allocator.ctx, m->params);
    if (m->grads)
        m->allocator.free(m->allocator.ctx, m->grads);
    free(m);
}
