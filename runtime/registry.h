/* registry.h (internal): the built-in models' names, for the runtime's messages and --help. */
#ifndef SOV_REGISTRY_H
#define SOV_REGISTRY_H

#include <stddef.h>

/* The built-in models' names, ", "-separated, into out (cap bytes): all of them, or with `cuda` those with a CUDA
 * implementation. */
void sov_model_names(int cuda, char *out, size_t cap);

#endif
