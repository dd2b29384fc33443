/* copy.h (internal): the snapshot's copy into staging.
 *
 * glibc's memcpy writes through the cache below its non-temporal threshold (~20 MB here): each destination line
 * is first read from memory, then written. A staging buffer is cold when a save begins, so for the pieces of a
 * small state (a 22 MB MLP state is three 7.5 MB buffers) that read is a third stream of memory traffic: 3.7-4.2 ms
 * where streaming stores took 2.5-2.9 ms. Above the threshold glibc streams on its own, and does it better than a
 * plain loop (50 ms against 57 for 512 MiB), so it keeps those copies. */
#ifndef SOV_CKPT_COPY_H
#define SOV_CKPT_COPY_H

#include <stddef.h>

/* memcpy(dst, src, n) for non-overlapping buffers; from 1 MiB to 16 MiB with non-temporal stores (x86-64), which
 * are complete, for other threads, when it returns. */
void sov_copy_to_staging(void *dst, const void *src, size_t n);

#endif
