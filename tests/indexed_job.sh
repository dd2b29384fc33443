#!/usr/bin/env bash
# A job started without mpirun, as a Kubernetes indexed Job starts it: every rank is a plain process with
# torchrun-style RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (examples/k8s/indexed-job.yaml). The ranks meet at
# MASTER_ADDR:MASTER_PORT and reduce over TCP (--comm auto picks tcp): training matches the 1-rank run, replicas
# are identical, ranks may start in any order, a missing rank is named at the rendezvous, a rank killed or hung in
# the middle of training ends the others within the collective timeout, the rank next to it naming it, and
# SIGTERM to one pod (its deletion) makes every rank save the same step and exit with --stop-exit-code, from which
# a resume goes on.
. "$(dirname "$0")/lib.sh"
need_data

C=(--hidden 64,32 --steps 40 --batch 48 --lr 2e-3 --warmup-steps 5 --log-every 10 --threads 1 --eval-every 0)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# pod N RANK PORT LOG ARGS...: one "pod" of an N-rank indexed Job, in the background
pod() {
    local n=$1 rank=$2 port=$3 log=$4
    shift 4
    env -u OMPI_COMM_WORLD_RANK RANK="$rank" WORLD_SIZE="$n" LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
        MASTER_PORT="$port" "$SOV" train "$@" >"$log" 2>&1 &
}

# wait_step LOG STEP: until the log shows training reached STEP (at most 60 s)
wait_step() {
    for _ in $(seq 600); do
        grep -q "step *$2/" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# start_pods N NAME ARGS...: pods 0..N-1 of a fresh job, logs in $tmp/NAME<r>.log, run dirs $tmp/NAME<r>; their
# pids in pids[]
start_pods() {
    local n=$1 name=$2 port
    shift 2
    port=$(free_port)
    pids=()
    for r in $(seq 0 $((n - 1))); do
        pod "$n" "$r" "$port" "$tmp/$name$r.log" "$@" --run-dir "$tmp/$name$r"
        pids+=($!)
    done
}

# --- 3 pods, the last ranks started first: trains, replicas identical, the same weights as 1 rank
"$SOV" train "${C[@]}" --run-dir "$tmp/one" --dump-params "$tmp/p1" >"$tmp/one.log" 2>&1 || fail "1 rank: $(cat "$tmp/one.log")"
port=$(free_port)
pids=()
for r in 2 1 0; do
    pod 3 $r "$port" "$tmp/pod$r.log" "${C[@]}" --run-dir "$tmp/job$r" --dump-params "$tmp/p3"
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a pod exited $?: $(cat "$tmp"/pod*.log)"; done
grep -q "(tcp comm)" "$tmp/pod0.log" || fail "auto did not pick tcp without mpirun: $(head -n 2 "$tmp/pod0.log")"
grep -q "parameters identical on all 3 ranks" "$tmp/pod0.log" || fail "no replica check: $(tail -n 3 "$tmp/pod0.log")"
python3 - "$tmp/p1" "$tmp/p3" <<'PY' || fail "3 pods drifted from 1 rank"
import array, sys
a, b = (array.array("f", open(p, "rb").read()) for p in sys.argv[1:])
d = max(abs(x - y) for x, y in zip(a, b))
print(f"3 pods over tcp vs 1 rank, 40 steps: max |dw| = {d:.2e}")
assert len(a) == len(b) and d < 1e-5
PY

# --- a rank that never comes: rank 0 names it when the rendezvous times out
port=$(free_port)
pod 3 0 "$port" "$tmp/lone0.log" "${C[@]}" --run-dir "$tmp/lone0" --comm-timeout 3
p0=$!
pod 3 1 "$port" "$tmp/lone1.log" "${C[@]}" --run-dir "$tmp/lone1" --comm-timeout 3
p1=$!
wait "$p0" && fail "rank 0 succeeded without rank 2"
wait "$p1"
grep -q "missing: 2" "$tmp/lone0.log" && echo "ok: $(grep -h "missing" "$tmp/lone0.log" | head -n 1)" \
    || fail "rank 0 did not name the missing rank: $(cat "$tmp/lone0.log")"

# --- kill -9 of rank 1 in the middle of training: ranks 0 and 2 stop within the timeout, naming rank 1
start_pods 3 kill "${C[@]}" --steps 100000 --log-every 1 --comm-timeout 10
wait_step "$tmp/kill0.log" 5 || fail "the job did not start: $(cat "$tmp/kill0.log")"
kill -9 "${pids[1]}"
start=$SECONDS
for r in 0 2; do
    wait "${pids[$r]}" && fail "rank $r exited 0 after rank 1 was killed"
done
elapsed=$((SECONDS - start))
[ "$elapsed" -le 12 ] || fail "the others took ${elapsed}s to stop (timeout 10 s)"
# The neighbour that lost its link to rank 1 names it; the other may instead name that neighbour, which stopped.
grep -h "error" "$tmp/kill0.log" "$tmp/kill2.log"
grep -q "rank 1 broke" "$tmp/kill0.log" "$tmp/kill2.log" && echo "ok: ranks 0 and 2 stopped ${elapsed}s after the kill" \
    || fail "no rank named rank 1: $(tail -n 3 "$tmp/kill0.log" "$tmp/kill2.log")"
# --- a rank that hangs (SIGSTOP: alive, its sockets open, silent): its neighbour names it within the timeout
start_pods 3 hang "${C[@]}" --steps 100000 --log-every 1 --comm-timeout 3
wait_step "$tmp/hang0.log" 5 || fail "the job did not start: $(cat "$tmp/hang0.log")"
kill -STOP "${pids[1]}"
start=$SECONDS
for r in 0 2; do
    wait "${pids[$r]}" && fail "rank $r exited 0 while rank 1 hung"
done
elapsed=$((SECONDS - start))
kill -9 "${pids[1]}"
wait "${pids[1]}" 2>/dev/null
[ "$elapsed" -le 8 ] || fail "the others took ${elapsed}s to stop (timeout 3 s)"
grep -q "waiting for rank 1" "$tmp/hang2.log" && echo "ok: ${elapsed}s after rank 1 hung: $(grep -h "waiting for rank 1" "$tmp/hang2.log")" \
    || fail "rank 2 did not name the hung rank 1: $(tail -n 3 "$tmp/hang2.log")"

# --- SIGTERM to one pod (pod deletion): every rank stops at the same step with a checkpoint and exits 143;
# continues from that step
start_pods 2 term "${C[@]}" --batch 64 --steps 100000 --log-every 1 --ckpt-dir "$tmp/term-ckpt" --stop-exit-code 143
wait_step "$tmp/term0.log" 5 || fail "the job did not start: $(cat "$tmp/term0.log")"
kill -TERM "${pids[1]}"
for r in 0 1; do # 143, as the manifest asks: the Job must not count a stopped rank as done
    wait "${pids[$r]}"
    rc=$?
    [ "$rc" -eq 143 ] || fail "rank $r exited $rc after SIGTERM, not --stop-exit-code 143: $(tail -n 3 "$tmp/term$r.log")"
done
stopped=$(sed -n 's/.*stopping at step \([0-9]*\) .*/\1/p' "$tmp/term0.log")
[ -n "$stopped" ] && [ -d "$tmp/term-ckpt/step-$stopped" ] && echo "ok: SIGTERM to rank 1: both ranks saved step $stopped" \
    || fail "no checkpoint at the stop: $(tail -n 4 "$tmp/term0.log")"
echo "ok: both exited 143 (--stop-exit-code), which the manifest's podFailurePolicy ignores"
start_pods 2 res "${C[@]}" --batch 64 --steps $((stopped + 5)) --ckpt-dir "$tmp/term-ckpt" --resume latest
for r in 0 1; do wait "${pids[$r]}" || fail "resumed rank $r exited $?: $(tail -n 3 "$tmp/res$r.log")"; done
grep -q "continuing from $tmp/term-ckpt/step-$stopped " "$tmp/res0.log" && echo "ok: resumed from step $stopped" \
    || fail "the resumed job did not continue from step $stopped: $(grep -h resume "$tmp/res0.log")"
finish
