/* model.c: the registry of built-in models and the flat buffers every model's tensors live in. */
#include "device.h"
#include "registry.h"
#include <sovtrain/runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const sov_model_ops sov_mlp_ops;
extern const sov_model_ops sov_gpt_ops;

static const sov_model_ops *const builtin_models[] = {&sov_mlp_ops, &sov_gpt_ops};
#ifdef SOVTRAIN_HAVE_CUDA
extern const sov_model_ops sov_mlp_cuda_ops;
static const sov_model_ops *const cuda_models[] = {&sov_mlp_cuda_ops};
#endif

const sov_model_ops *sov_model_builtin(int index) {
    if (index < 0 || (size_t)index >= sizeof builtin_models / sizeof *builtin_models)
        return NULL;
    return builtin_models[index];
}

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

int sov_model_has_cuda(const sov_model_ops *ops) { return sov_model_find_cuda(ops->name) != NULL; }

int sov_model_generates(const sov_model_ops *ops) { return ops->kind == SOV_MODEL_LANGUAGE && ops->next_logits; }

void sov_model_names(int (*keep)(const sov_model_ops *ops), char *out, size_t cap) {
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; sov_model_builtin(i); i++) {
        const char *name = sov_model_builtin(i)->name;
        if (keep && !keep(sov_model_builtin(i)))
            continue;
        int n = snprintf(out + len, cap - len, "%s%s", len ? ", " : "", name);
        if (n < 0 || (size_t)n >= cap - len)
            return;
        len += (size_t)n;
    }
}

static void *host_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    return sov_aligned_alloc(bytes);
}

static void host_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

/* The model's settings with the defaults filled in where cfg gives none (free the array). */
static const char **settings_or_defaults(const sov_model_ops *ops, const sov_model_config *cfg) {
    const char **values = sov_calloc((size_t)ops->num_settings + 1, sizeof *values);
    for (int i = 0; values && i < ops->num_settings; i++)
        values[i] = cfg->values && cfg->values[i] ? cfg->values[i] : ops->settings[i].default_value;
    return values;
}

/* The registry's entry for `name` on cfg's device, or an error listing what there is. */
static sov_status find_ops(const char *name, const sov_model_config *cfg, const sov_model_ops **out) {
    char names[256];
    if (!(*out = sov_model_find(name))) {
        sov_model_names(NULL, names, sizeof names);
        return sov_fail(SOV_ERR_INVALID, "unknown model \"%s\" (built-in: %s)", name, names);
    }
    if (cfg->device && !(*out = sov_model_find_cuda(name))) {
        sov_model_names(sov_model_has_cuda, names, sizeof names);
        return sov_fail(SOV_ERR_UNSUPPORTED, "the %s model has no CUDA implementation yet (models with one: %s); "
                        "train it with --device cpu", name, names);
    }
    return SOV_OK;
}

sov_status sov_model_create(const char *name, const sov_model_config *cfg, const sov_allocator *allocator,
                            sov_model **out) {
    const sov_model_ops *ops;
    SOV_CHECK(find_ops(name, cfg, &ops));
    sov_model *m = sov_calloc(1, sizeof *m);
    const char **values = settings_or_defaults(ops, cfg);
    if (!m || !values) {
        free(m);
        free(values);
        return SOV_ERR_NOMEM;
    }
    m->ops = ops;
    m->allocator = allocator ? *allocator : (sov_allocator){.alloc = host_alloc, .free = host_free};
    sov_model_config full = *cfg;
    full.values = values;
    sov_status st = ops->create(&full, m);
    free(values);
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
