#!/usr/bin/env bash
# Exhaustive single-byte corruption of small checkpoints: every byte of every file is detected by verify. One
# checkpoint is a training job's; the other a general state of 2 ranks: every dtype, sharded tensors.
# usage: ckpt_corrupt.sh SOVTRAIN CKPT_CORRUPT CKPT_STATE_CHECK
. "$(dirname "$0")/lib.sh"
need_data
"$SOV" train --hidden 3 --steps 2 --batch 16 --threads 1 --eval-every 0 --run-dir "$tmp/run" --ckpt-every 2 \
    >"$tmp/log" 2>&1 || fail "making the checkpoint: $(cat "$tmp/log")"
"$2" "$tmp/run/checkpoints/step-2" || fail "a corruption went undetected"
launch -np 2 -- "$3" save "$tmp/state" --small >"$tmp/log" 2>&1 || fail "making the general state: $(cat "$tmp/log")"
"$2" "$tmp/state/step-1" || fail "a corruption of the general state went undetected"
finish
