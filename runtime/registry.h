/* registry.h (internal): the built-in models' names, for the runtime's messages and --help. */
#ifndef SOV_REGISTRY_H
#define SOV_REGISTRY_H

#include <sovtrain/runtime.h>

#include <stddef.h>

/* The built-in models' names, ", "-separated, into out (cap bytes): those `keep` accepts (NULL: all of them). */
void sov_model_names(int (*keep)(const sov_model_ops *ops), char *out, size_t cap);
/* Filters for sov_model_names: a CUDA implementation; a language model that generates text. */
int sov_model_has_cuda(const sov_model_ops *ops);
int sov_model_generates(const sov_model_ops *ops);

#endif
