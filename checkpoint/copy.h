/* copy.h (internal): the snapshot's copy into staging.
 *
 * glibc's memcpy writes through the cache below its non-temporal threshold, which it derives from the size of the
 * last-level cache: each destination line is first read from memory, then written. A staging buffer is cold when a
 * save begins, so that read is a third stream of memory traffic, and it is paid on every copy below the threshold:
 * - for the pieces of a small state (a 22 MB MLP state is three 7.5 MB buffers): 3.7-4.2 ms, against 2.5-2.9 ms with
 *   streaming stores (2-vCPU Ice Lake host, threshold ~20 MB);
 * - for the snapshot's 64 MiB blocks on a host whose 300 MiB L3 puts the threshold above them (2-vCPU Xeon, family 6
 *   model 207): 60-66 ms for 512 MiB, against 44-50 ms for one glibc memcpy of the whole, which streams.
 * So every copy from 1 MiB up streams, reading four 4 KiB strides in turn as glibc's own large copies do: 40-47 ms
 * for the 512 MiB in 64 MiB blocks there, where streaming one stride at a time took 50-69 ms. */
#ifndef SOV_CKPT_COPY_H
#define SOV_CKPT_COPY_H

#include <stddef.h>

/* memcpy(dst, src, n) for non-overlapping buffers; from 1 MiB up with non-temporal stores (x86-64), which are
 * complete, for other threads, when it returns. */
void sov_copy_to_staging(void *dst, const void *src, size_t n);

#endif
