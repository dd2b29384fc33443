#!/usr/bin/env bash
# The launcher's fault tolerance on real jobs: kill -9 of a rank mid-training -> restart from the latest
# checkpoint and final weights bitwise identical to an uninterrupted run; restarts exhausted -> non-zero exit and
# a summary; SIGTERM to the launcher -> a checkpoint, exit 0, and --resume latest continues from that step;
# torchrun's variables are there for a PyTorch env:// job.
. "$(dirname "$0")/lib.sh"
need_data

C=(--hidden 64 --batch 32 --steps 3000 --warmup-steps 10 --log-every 1 --threads 1 --eval-every 0 --ckpt-every 500)
step_reached() { # RUN_DIR STEP: true once metrics.jsonl shows that step
    python3 -c "
import json, sys
try:
    steps = [json.loads(l).get('step', 0) for l in open(sys.argv[1] + '/metrics.jsonl') if '\"step\"' in l]
except (OSError, ValueError):
    steps = []
sys.exit(0 if steps and max(steps) >= int(sys.argv[2]) else 1)" "$1" "$2"
}
rank_pid() { # RUN_DIR RANK: pid of that rank of the job writing RUN_DIR
    for p in $(pgrep -f -- "--run-dir $1 "); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" &&
            grep -q "train" "/proc/$p/cmdline" 2>/dev/null && ! grep -q "mpirun\|launch" "/proc/$p/cmdline" && echo "$p"
    done | head -n 1
}

# --- the reference: uninterrupted
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/ref" --dump-params "$tmp/pref" >"$tmp/ref.log" 2>&1 \
    || fail "uninterrupted run: $(tail -5 "$tmp/ref.log")"

# --- kill -9 of rank 1 after the step-1000 checkpoint: the launcher restarts, the result is bit-identical
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/k " --dump-params "$tmp/pk" >"$tmp/k.log" 2>&1 &
job=$!
for _ in $(seq 600); do
    [ -e "$tmp/k /checkpoints/step-1000/manifest.json" ] && step_reached "$tmp/k " 1200 && break
    sleep 0.05
done
victim=$(rank_pid "$tmp/k" 1)
[ -n "$victim" ] || fail "restart: could not find rank 1 (the job may have finished first): $(tail -3 "$tmp/k.log")"
[ -n "$victim" ] && kill -9 "$victim"
wait "$job" || fail "restart: the job failed: $(tail -20 "$tmp/k.log")"
grep -q "rank 1 .*killed by signal 9" "$tmp/k.log" || fail "restart: the failure was not named: $(grep launch "$tmp/k.log")"
grep -q "summary: exit 0 after 2 attempts, 1 restart used of 3" "$tmp/k.log" || fail "restart: no summary: $(grep launch "$tmp/k.log")"
grep -q "resume: continuing from $tmp/k /checkpoints/step-" "$tmp/k.log" || fail "restart: did not resume"
cmp -s "$tmp/pref" "$tmp/pk" || fail "restart: final weights differ from the uninterrupted run's"
echo "ok: kill -9 rank 1 -> $(grep -o 'resume: continuing from [^ ]* [^ ]* (step [0-9]*' "$tmp/k.log" | sed 's|.*/||'), weights bitwise identical"
grep "summary" "$tmp/k.log"

# --- restarts exhausted: a non-zero exit and the summary of every failure
launch -np 2 --max-restarts 1 -- sh -c 'kill -9 $$' >"$tmp/x.log" 2>&1 && fail "exhausted restarts: exit 0"
grep -q "summary: exit [1-9][0-9]* after 2 attempts, 1 restart used of 1" "$tmp/x.log" \
    && [ "$(grep -c '^  attempt [12] failed: ' "$tmp/x.log")" -eq 2 ] && grep -q 'killed by signal 9' "$tmp/x.log" \
    || fail "exhausted restarts: $(grep launch "$tmp/x.log")"
echo "ok: restarts exhausted -> $(grep -o 'summary: exit [0-9]*' "$tmp/x.log")"

# --- SIGTERM to the launcher: checkpoint, exit 0 within --grace, and --resume latest continues from that step
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$SOV" launch -np 2 --grace 60 -- sovtrain train "${C[@]}" \
    --run-dir "$tmp/s" >"$tmp/s.log" 2>&1 &
job=$!
for _ in $(seq 600); do step_reached "$tmp/s" 300 && break; sleep 0.05; done
start=$SECONDS
kill -TERM "$job"
wait "$job"
rc=$?
[ "$rc" -eq 0 ] || fail "SIGTERM: exit $rc: $(tail -5 "$tmp/s.log")"
[ $((SECONDS - start)) -le 60 ] || fail "SIGTERM: took $((SECONDS - start)) s, beyond --grace"
stopped=$(grep -o 'stopping at step [0-9]*' "$tmp/s.log" | grep -o '[0-9]*$')
[ -n "$stopped" ] || fail "SIGTERM: no checkpoint at a stop: $(tail -5 "$tmp/s.log")"
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/s" --resume latest --dump-params "$tmp/ps" >"$tmp/s2.log" 2>&1 \
    || fail "resume after SIGTERM: $(tail -5 "$tmp/s2.log")"
grep -q "continuing from $tmp/s/checkpoints/step-$stopped (step $stopped of 3000)" "$tmp/s2.log" \
    || fail "resume after SIGTERM did not continue from step $stopped: $(grep resume "$tmp/s2.log")"
cmp -s "$tmp/pref" "$tmp/ps" || fail "SIGTERM + resume: final weights differ from the uninterrupted run's"
echo "ok: SIGTERM -> saved at step $stopped, exit 0 in $((SECONDS - start)) s; resumed there, weights identical"

# --- torchrun's variables: a PyTorch job initialises with env:// and all-reduces
if /usr/bin/python3 -c "import torch.distributed" 2>/dev/null; then
    cat >"$tmp/ddp.py" <<'PY'
import os, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="env://")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
assert t.item() == sum(range(1, dist.get_world_size() + 1)), t
print(f"torch rank {dist.get_rank()} of {dist.get_world_size()} local {os.environ['LOCAL_RANK']}: sum {t.item():.0f}",
      flush=True)
dist.destroy_process_group()
PY
    launch -np 2 -- /usr/bin/python3 "$tmp/ddp.py" >"$tmp/ddp.log" 2>&1 || fail "torch env:// job: $(cat "$tmp/ddp.log")"
    [ "$(grep -o 'of 2 local [01]: sum 3' "$tmp/ddp.log" | sort -u | wc -l)" -eq 2 ] || fail "torch env:// job: $(cat "$tmp/ddp.log")"
    echo "ok: PyTorch env:// with gloo: $(grep -m1 'sum 3' "$tmp/ddp.log")"
else
    echo "note: Debian's python3-torch is not installed: the PyTorch env:// check is skipped"
fi
finish
