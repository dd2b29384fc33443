/* comm_hang: one rank stops calling collectives; the others must fail within the timeout, not hang.
 * usage: comm_hang BACKEND STUCK_RANK TIMEOUT_S
 * Every rank runs allreduces; rank STUCK_RANK, after 3 of them, blocks forever in pause(). A rank whose
 * collective fails prints the error and ends the job (sov_comm_abort); the watchdog ends it otherwise.
 * The killed ranks leave shared-memory segments behind, which the launcher must remove. */
#include <sovtrain/comm.h>

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: comm_hang BACKEND STUCK_RANK TIMEOUT_S\n");
        return 2;
    }
    MPI_Init(&argc, &argv);
    sov_world world;
    sov_comm_config cfg = {.timeout_s = atof(argv[3])};
    sov_comm *comm;
    if (sov_comm_backend_parse(argv[1], &cfg.backend) != SOV_OK || sov_world_from_env(&world) != SOV_OK ||
        sov_comm_init(&comm, &world, &cfg) != SOV_OK) {
        fprintf(stderr, "comm_hang: set-up failed: %s\n", sov_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int stuck = atoi(argv[2]);
    static float x[65536] = {1.0f}; /* above the small-message size: shm allocates a scratch segment */
    for (int i = 0;; i++) {
        if (world.rank == stuck && i == 3) {
            fprintf(stderr, "rank %d: stopping collectives now\n", world.rank);
            for (;;)
                pause();
        }
        if (sov_comm_allreduce(comm, x, x, 65536, SOV_F32, SOV_SUM) != SOV_OK) {
            fprintf(stderr, "rank %d: error: %s\n", world.rank, sov_last_error());
            sov_comm_abort(comm, 3);
        }
    }
}
