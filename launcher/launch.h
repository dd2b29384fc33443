/* launch.h: `sovtrain launch`, which starts a job of N ranks through Open MPI's mpirun, tags every output line
 * with its rank, passes SIGINT/SIGTERM on, and exits with the job's status. */
#ifndef SOV_LAUNCH_H
#define SOV_LAUNCH_H

#include "sov.h"

/* `sovtrain launch ARGS...` (argv[0] is "launch"). Returns the process exit code. */
int sov_launch_main(int argc, char **argv);

/* Checks an Open MPI hostfile ("host [slots=N] [max_slots=N]" lines, '#' comments) and sums its slots (a host
 * without slots= counts as 1). Errors name the file and line. */
sov_status sov_hostfile_check(const char *path, int *total_slots);

/* The first host of a Slurm node list ("node[07-10,12],gpu3" -> "node07"): where rank 0 runs, so MASTER_ADDR.
 * Returns 0, leaving out untouched, when the list is empty or malformed. */
int sov_slurm_first_host(const char *nodelist, char *out, size_t cap);

/* `sovtrain _rank CMD ARGS...`: what each rank runs first (sets torchrun's variables, then execs CMD). */
int sov_rank_main(int argc, char **argv);

/* `sovtrain doctor [--ckpt-dir DIR] [--require-rdma] [--require-gpu]`: a preflight report for this node. */
int sov_doctor_main(int argc, char **argv);

#endif
