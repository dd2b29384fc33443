#!/usr/bin/env bash
# Runs tests/comm_check as a real N-rank job: comm_check.sh SOVTRAIN COMM_CHECK NP BACKEND [VAR=VALUE...]
. "$(dirname "$0")/lib.sh"
check=$2 np=$3 backend=$4
shift 4
if [ "$backend" = nccl ]; then # a GPU per rank, or skip before starting anything
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
    [ "$gpus" -ge "$np" ] || { echo "SKIP: nccl needs $np GPUs, nvidia-smi lists ${gpus:-0}"; exit 77; }
fi
env "$@" ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    "$SOV" launch -np "$np" --max-restarts 0 -- "$check" "$backend"
rc=$?
[ "$rc" -eq 77 ] && exit 77 # the job says it cannot run here (nccl without a GPU per rank)
[ "$rc" -eq 0 ] || fail "comm_check $backend on $np ranks ($*) exited $rc"
finish
