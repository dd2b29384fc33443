/* blas_kernels.h: OpenBLAS's kernels on CPUs newer than the OpenBLAS release.
 *
 * Debian's OpenBLAS (0.3.21) picks its kernels by CPU model when it loads, and falls back to its Prescott (SSE3)
 * kernels for a model it does not know. On a 2-vCPU Xeon of family 6 model 207 (AVX-512) that made the MLP train at
 * 2162 samples/s on one rank, against 5636 with the SkylakeX kernels, and PyTorch's products (the same library) 4x
 * slower. The choice is made once, at load, from OPENBLAS_CORETYPE: so the command, before anything else, re-executes
 * itself with OPENBLAS_CORETYPE naming the kernels this CPU can run, when OpenBLAS fell back to Prescott and the
 * variable is unset. A value the user set is always kept. */
#ifndef SOV_BLAS_KERNELS_H
#define SOV_BLAS_KERNELS_H

#include "device.h"
#include <sovtrain/runtime.h>

/* The kernels sovtrain would switch OpenBLAS to in this process ("SkylakeX", "Haswell"), or NULL: OpenBLAS chose
 * well, or OPENBLAS_CORETYPE is set. */
const char *sov_blas_replacement(void);

/* sov_blas_choose_kernels (runtime.h) re-executes the command with better kernels. It is called only in the main
 * of a command that trains or samples: a launcher that set the variable would pass it on to ranks on other hosts,
 * whose CPUs may lack these instructions; each rank decides for its own CPU. */

/* The kernels OpenBLAS uses ("SkylakeX", ...), and a sentence for the job's log when sovtrain chose them ("" when
 * OpenBLAS or the user did). */
const char *sov_blas_kernels(void);
const char *sov_blas_kernels_note(void);

#endif
