#!/usr/bin/env bash
# A real PyTorch DDP job (gloo, 2 ranks; tests/python/ddp_train.py) checkpointed by sovtrain.torch.Checkpointer
# under `sovtrain launch`, with PyPI's torch from the test venv:
#  - kill -9 of rank 1 mid-run (after the step-600 checkpoint): the launcher restarts the job, it resumes from that
#    checkpoint, and its final weights are bitwise those of an uninterrupted run;
#  - SIGTERM to the launcher mid-run: every rank saves, the job exits within --grace with the ranks'
#    stop_exit_code (143, as a Kubernetes indexed Job needs); a second launch continues from that checkpoint to the
#    same final weights.
# usage: python_torch.sh SOVTRAIN BUILD_DIR
. "$(dirname "$0")/lib.sh"
need_torch
need_data
install_python "$2"
TRAIN=("$TORCH_PY" "$TESTS/python/ddp_train.py" --steps 1400 --every 200)

# wait_paused RUN: until both ranks wait at --pause-at (their checkpoint is durable); 60 s at most
wait_paused() {
    for _ in $(seq 1200); do
        [ -e "$1/paused-rank-0" ] && [ -e "$1/paused-rank-1" ] && return 0
        sleep 0.05
    done
    return 1
}

launch -np 2 -- "${TRAIN[@]}" --run-dir "$tmp/ref" --final "$tmp/ref.bin" >"$tmp/ref.log" 2>&1 ||
    fail "uninterrupted run: $(tail -20 "$tmp/ref.log")"

# --- kill -9 of rank 1 after the step-600 checkpoint
mkdir -p "$tmp/k"
"$SOV" launch -np 2 --max-restarts 2 -- "${TRAIN[@]}" --run-dir "$tmp/k" --final "$tmp/k.bin" --pause-at 600 \
    >"$tmp/k.log" 2>&1 &
job=$!
if wait_paused "$tmp/k"; then
    kill -9 "$(cat "$tmp/k/paused-rank-1")"
else
    fail "kill -9: the job never reached step 600: $(tail -5 "$tmp/k.log")"
fi
wait "$job" || fail "kill -9: the job failed: $(tail -20 "$tmp/k.log")"
grep -q "rank 1 .*killed by signal 9" "$tmp/k.log" || fail "kill -9: the failure was not named: $(grep launch "$tmp/k.log")"
grep -q "resumed from step 600 (2 ranks saved it)" "$tmp/k.log" || fail "kill -9: did not resume from step 600: $(grep sovtrain "$tmp/k.log")"
if cmp -s "$tmp/ref.bin" "$tmp/k.bin"; then
    echo "ok: kill -9 rank 1 at step 600 -> restarted, resumed from step 600, final weights bitwise equal"
else
    fail "kill -9: the final weights differ from the uninterrupted run's"
fi

# --- SIGTERM to the launcher while the ranks wait after step 800
mkdir -p "$tmp/s"
"$SOV" launch -np 2 --grace 60 -- "${TRAIN[@]}" --run-dir "$tmp/s" --final "$tmp/s.bin" --pause-at 800 \
    --stop-exit-code 143 >"$tmp/s.log" 2>&1 &
job=$!
wait_paused "$tmp/s" || fail "SIGTERM: the job never reached step 800: $(tail -5 "$tmp/s.log")"
start=$SECONDS
kill -TERM "$job"
wait "$job"
rc=$?
[ "$rc" -eq 143 ] || fail "SIGTERM: exit $rc, not the ranks' --stop-exit-code 143: $(tail -20 "$tmp/s.log")"
[ $((SECONDS - start)) -le 60 ] || fail "SIGTERM: took $((SECONDS - start)) s, beyond --grace"
stopped=$(sed -n "s/.*stopping at step \([0-9]*\) on SIGUSR1.*/\1/p" "$tmp/s.log" | head -n 1)
if [ -z "$stopped" ] || [ ! -e "$tmp/s/checkpoints/step-$stopped/manifest.json" ] || [ -e "$tmp/s.bin" ]; then
    fail "SIGTERM: no stop with a checkpoint: $(tail -8 "$tmp/s.log"; ls "$tmp/s/checkpoints")"
    finish
fi
launch -np 2 -- "${TRAIN[@]}" --run-dir "$tmp/s" --final "$tmp/s.bin" >"$tmp/s2.log" 2>&1 ||
    fail "the launch after SIGTERM: $(tail -20 "$tmp/s2.log")"
grep -q "resumed from step $stopped " "$tmp/s2.log" || fail "the launch after SIGTERM did not resume from step $stopped"
if cmp -s "$tmp/ref.bin" "$tmp/s.bin"; then
    echo "ok: SIGTERM -> saved at step $stopped, exit 143 (stop_exit_code) in $((SECONDS - start)) s; the next launch resumed there, weights bitwise equal"
else
    fail "SIGTERM + resume: the final weights differ from the uninterrupted run's"
fi
finish
