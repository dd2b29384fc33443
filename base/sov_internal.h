/* sov_internal.h: what every module of libsovtrain shares inside the library and never exports: checked
 * allocation, clocks, small parsers, SIMD clones. Modules include this header; users of the library never see it. */
#ifndef SOV_INTERNAL_H
#define SOV_INTERNAL_H

#include <sovtrain/sov.h>

/* On x86-64, a function so marked is compiled for AVX-512, AVX2 and the baseline, and the loader picks the best
 * the CPU has: for the plain loops GCC vectorises (byte planes, GELU, LayerNorm). Files using it are built with
 * -ffp-contract=off so that no clone fuses a multiply-add: every clone gives the same bits. Not under
 * ThreadSanitizer, whose instrumented clone resolvers run before its runtime is up and crash the program at load. */
#if defined(__x86_64__) && defined(__has_attribute) && !defined(__SANITIZE_THREAD__)
#if __has_attribute(target_clones)
#define SOV_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef SOV_SIMD_CLONES
#define SOV_SIMD_CLONES
#endif

/* Allocation that records a sov_fail message naming the caller on failure. Free with free(). */
void *sov_malloc_at(size_t bytes, const char *file, int line);
void *sov_calloc_at(size_t count, size_t size, const char *file, int line);
void *sov_aligned_alloc_at(size_t bytes, const char *file, int line); /* 64-byte aligned, zeroed */
#define sov_malloc(bytes) sov_malloc_at((bytes), __FILE__, __LINE__)
#define sov_calloc(count, size) sov_calloc_at((count), (size), __FILE__, __LINE__)
#define sov_aligned_alloc(bytes) sov_aligned_alloc_at((bytes), __FILE__, __LINE__)

/* Parses `text` as a whole decimal integer in [lo, hi]; the error names `what` (a flag or field) and the range. */
sov_status sov_parse_long(const char *what, const char *text, long lo, long hi, long *out);

/* The first line of a small text file, without its newline; "" (and 0) when it cannot be read. */
int sov_read_line(const char *path, char *out, size_t cap);

/* Creates directory `path` and its missing parents (mode 0755). */
sov_status sov_mkdir_p(const char *path);

/* Monotonic wall clock in seconds. */
double sov_now(void);

/* The CPUs this process may run on: its affinity mask (a container's or a binding's share, not the machine's), or
 * the online count where the mask cannot be read. At least 1. */
int sov_usable_cpus(void);

#endif
