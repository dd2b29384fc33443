/* job.h (internal): one attempt of a job: mpirun run, its output relayed with rank tags, its failure read. */
#ifndef SOV_JOB_H
#define SOV_JOB_H

#include <signal.h>

typedef struct job_failure {
    int known;       /* mpirun said which rank failed first */
    int rank;
    char host[128];
    int exit_code;   /* when it exited */
    int signal;      /* when a signal killed it */
    int aborted;     /* MPI_Abort (a rank reported an error and ended the job) */
} job_failure;

#define JOB_MAX_WATCHED 4096

/* Ranks whose collective watchdog reported a collective that never completed (--comm-timeout). */
typedef struct job_timeouts {
    int count;
    unsigned long long seq[JOB_MAX_WATCHED]; /* 0: no report from that rank */
    char op[JOB_MAX_WATCHED][16];
} job_timeouts;

typedef struct job_result {
    int exit_code;        /* mpirun's */
    job_failure failure;  /* what mpirun reported, if anything */
    job_timeouts *timeouts; /* the watchdogs' reports (allocated by job_run; free with job_result_free) */
    int world;            /* ranks in the job (set by the caller), to name those that never reported */
    int stop_signal;      /* the launcher was asked to stop (SIGTERM/SIGINT) during this attempt */
} job_result;

/* Runs argv (an mpirun command line) to completion. SIGTERM/SIGINT to the launcher become SIGUSR1 for the ranks
 * (mpirun forwards SIGUSR1 to every rank, where `sovtrain train` checkpoints and exits; it would kill them on
 * SIGTERM); after grace_s seconds mpirun gets SIGTERM, then SIGKILL. With log_dir, rank N's lines are also
 * appended to log_dir/rank-N.log and mpirun's own to log_dir/launcher.log. */
void job_run(const char *const *argv, double grace_s, const char *log_dir, job_result *result);

/* "rank 1 on host vm was killed by signal 9 (Killed)", "rank 1 never arrived in allreduce #57 (ranks 0, 2
 * waited --comm-timeout)", or a general description. */
void job_describe(const job_result *r, char *out, size_t cap);
void job_result_free(job_result *r);

#endif
