/* blas_kernels.c: see blas_kernels.h. */
#include "blas_kernels.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Set beside OPENBLAS_CORETYPE by the re-execution: the kernels OpenBLAS had fallen back to. */
#define FALLBACK_VAR "SOVTRAIN_BLAS_FALLBACK"

/* The widest of OpenBLAS 0.3.21's x86-64 kernel sets that this CPU runs, or NULL. */
static const char *kernels_for_this_cpu(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}

const char *sov_blas_replacement(void) {
    const char *core = openblas_get_corename();
    if (getenv("OPENBLAS_CORETYPE") || !core || strcasecmp(core, "Prescott") != 0)
        return NULL;
    return kernels_for_this_cpu(); /* NULL on a CPU of SSE3's time: Prescott is its kernel set */
}

void sov_blas_choose_kernels(char **argv) {
    const char *better = sov_blas_replacement(), *core = openblas_get_corename();
    if (!better)
        return;
    setenv("OPENBLAS_CORETYPE", better, 1);
    setenv(FALLBACK_VAR, core, 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "sovtrain: warning: OpenBLAS uses its %s kernels on this CPU, which runs %s: cannot restart with "
            "OPENBLAS_CORETYPE=%s (/proc/self/exe: %s); set it yourself for products ~2-4x faster\n",
            core, better, better, strerror(errno));
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(FALLBACK_VAR);
}

const char *sov_blas_kernels(void) {
    const char *core = openblas_get_corename();
    return core ? core : "unknown";
}

const char *sov_blas_kernels_note(void) {
    static char note[256];
    const char *fallback = getenv(FALLBACK_VAR), *chosen = getenv("OPENBLAS_CORETYPE");
    if (!fallback || !chosen)
        return "";
    snprintf(note, sizeof note, "OpenBLAS does not know this CPU and chose its %s kernels; sovtrain set "
             "OPENBLAS_CORETYPE=%s (set it yourself to choose)", fallback, chosen);
    return note;
}
