/* launch.h: `sovtrain launch`, which starts a job of N ranks through Open MPI's mpirun, tags every output line
 * with its rank, passes SIGINT/SIGTERM on, and exits with the job's status. */
#ifndef SOV_LAUNCH_H
#define SOV_LAUNCH_H

#include <sovtrain/sov.h>

#ifdef __cplusplus
extern "C" {
#endif

/* `sovtrain launch ARGS...` (argv[0] is "launch"). Returns the process exit code. */
SOV_API int sov_launch_main(int argc, char **argv);

/* `sovtrain _rank CMD ARGS...`: what each rank runs first (sets torchrun's variables, then execs CMD). */
SOV_API int sov_rank_main(int argc, char **argv);

/* `sovtrain doctor [--ckpt-dir DIR] [--require-rdma] [--require-gpu]`: a preflight report for this node. */
SOV_API int sov_doctor_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
