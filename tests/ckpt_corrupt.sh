#!/usr/bin/env bash
# Exhaustive single-byte corruption of a small checkpoint: every byte of every file is detected by verify.
# usage: ckpt_corrupt.sh SOVTRAIN CKPT_CORRUPT
. "$(dirname "$0")/lib.sh"
need_data
"$SOV" train --hidden 3 --steps 2 --batch 16 --threads 1 --eval-every 0 --run-dir "$tmp/run" --ckpt-every 2 \
    >"$tmp/log" 2>&1 || fail "making the checkpoint: $(cat "$tmp/log")"
"$2" "$tmp/run/checkpoints/step-2" || fail "a corruption went undetected"
finish
