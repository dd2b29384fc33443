/* boundary_probe.c: compiled as if it were a file of the runtime module, it reaches for the checkpoint module's
 * internal codec.h. The build must refuse it (tests/CMakeLists.txt, test module_boundaries). */
#include "codec.h"
#include <sovtrain/ckpt.h>

int sov_boundary_probe(void) { return 0; }
