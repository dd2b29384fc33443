/* comm_watchdog.c: ends a job stuck in one collective. See comm_internal.h. */
#include "comm_internal.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define WATCHDOG_EXIT 124 /* as timeout(1) */
/* After reporting, a stuck rank waits this long before it exits: its peers' watchdogs, which started at about the
 * same time, report too before mpirun tears the job down. `sovtrain launch` then names the ranks that did not
 * report (the ones that never arrived). */
#define REPORT_GRACE_S 2

static void *watchdog_main(void *arg) {
    sov_comm *c = arg;
    while (!atomic_load(&c->watchdog_stop)) {
        nanosleep(&(struct timespec){.tv_nsec = 200 * 1000 * 1000}, NULL);
        uint64_t seq = atomic_load(&c->busy_seq);
        double waited = sov_now() - atomic_load(&c->busy_since);
        if (!seq || atomic_load(&c->busy_seq) != seq || waited <= c->timeout_s + c->watchdog_grace)
            continue;
        fprintf(stderr,
                "error: rank %d: %s #%llu (%s backend) did not complete within the %.0f s timeout (--comm-timeout; "
                "waited %.0f s): another rank stopped calling collectives, hangs, or died. Ending the job.\n",
                c->rank, sov_op_name((sov_op_kind)atomic_load(&c->busy_kind)), (unsigned long long)seq,
                sov_comm_backend_name(c->backend), c->timeout_s, waited);
        fflush(stderr);
        sleep(REPORT_GRACE_S);
        _exit(WATCHDOG_EXIT); /* the collective holds the backend on another thread: nothing else is safe */
    }
    return NULL;
}

void sov_watchdog_start(sov_comm *c) {
    atomic_store(&c->watchdog_stop, 0);
    c->watchdog_running = pthread_create(&c->watchdog, NULL, watchdog_main, c) == 0;
}

void sov_watchdog_stop(sov_comm *c) {
    if (!c->watchdog_running)
        return;
    atomic_store(&c->watchdog_stop, 1);
    pthread_join(c->watchdog, NULL);
    c->watchdog_running = 0;
}
