/* launch_internal.h: the launcher's parsers, shared by its files and its unit tests. */
#ifndef SOV_LAUNCH_INTERNAL_H
#define SOV_LAUNCH_INTERNAL_H

#include "sov_internal.h"

/* Checks an Open MPI hostfile ("host [slots=N] [max_slots=N]" lines, '#' comments) and sums its slots (a host
 * without slots= counts as 1). Errors name the file and line. */
sov_status sov_hostfile_check(const char *path, int *total_slots);

/* The first host of a Slurm node list ("node[07-10,12],gpu3" -> "node07"): where rank 0 runs, so MASTER_ADDR.
 * Returns 0, leaving out untouched, when the list is empty or malformed. */
int sov_slurm_first_host(const char *nodelist, char *out, size_t cap);

#endif
