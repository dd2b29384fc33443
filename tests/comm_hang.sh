#!/usr/bin/env bash
# A rank that stops calling collectives makes the job fail within the collective timeout, with an error that
# names it (shm names the rank itself; over MPI every waiting rank's watchdog reports the collective, and the
# launcher names the ranks that never arrived).
# usage: comm_hang.sh SOVTRAIN COMM_HANG
. "$(dirname "$0")/lib.sh"
hang=$2

run_case() { # BACKEND NP STUCK EXPECT [VAR=VALUE...]
    local backend=$1 np=$2 stuck=$3 expect=$4
    shift 4
    local start=$SECONDS job="hangtest$$x$np$backend"
    env "$@" SOVTRAIN_JOB_ID="$job" ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        timeout 120 "$SOV" launch -np "$np" --max-restarts 0 -- "$hang" "$backend" "$stuck" 2 >"$tmp/out" 2>&1
    local rc=$? took=$((SECONDS - start))
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] && [ "$took" -ge 100 ]; then
        fail "$backend: the job did not end by itself (exit $rc after ${took} s): $(tail -5 "$tmp/out")"
    elif ! grep -q -- "$expect" "$tmp/out"; then
        fail "$backend: no \"$expect\" in the output (exit $rc): $(cat "$tmp/out")"
    elif compgen -G "/dev/shm/sovtrain-$job-*" >/dev/null; then
        fail "$backend: the launcher left the job's segments in /dev/shm: $(ls /dev/shm | grep "$job")"
    else
        echo "ok: $backend, $np ranks, rank $stuck stuck: exit $rc after ${took} s: $(grep -m1 -- "$expect" "$tmp/out")"
    fi
}

run_case shm 3 1 "waiting for rank 1 (pid"
run_case shm 4 3 "waiting for rank 3 (pid"
run_case hier 4 2 "waiting for rank 2 (pid" SOVTRAIN_HIER_RANKS_PER_HOST=4
run_case hier 3 2 "ranks 0, 1 waited in it; rank 2 never arrived" SOVTRAIN_HIER_RANKS_PER_HOST=1
run_case mpi 2 1 "rank 0 waited in it; rank 1 never arrived"
run_case mpi 4 2 "ranks 0, 1, 3 waited in it; rank 2 never arrived"
finish
