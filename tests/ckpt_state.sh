#!/usr/bin/env bash
# General checkpoint states through the public API in real jobs: over 1000 tensors of every dtype and of odd
# shapes, replicated and sharded, saved by 1, 2 and 3 ranks and each loaded by 1 to 4 ranks, whole and by box,
# bitwise equal (tests/ckpt_state_check.c); each checkpoint verifies.
# usage: ckpt_state.sh SOVTRAIN CKPT_STATE_CHECK
. "$(dirname "$0")/lib.sh"
CHECK=$(realpath "$2")
for saved in 1 2 3; do
    dir=$tmp/saved-by-$saved
    if ! launch -np "$saved" -- "$CHECK" save "$dir" >"$tmp/save.log" 2>&1; then
        fail "saving from $saved ranks: $(cat "$tmp/save.log")"
        continue
    fi
    grep -h "^saved" "$tmp/save.log"
    "$SOV" ckpt verify "$dir/step-1" >"$tmp/verify.log" 2>&1 || fail "verify: $(cat "$tmp/verify.log")"
    for loading in 1 2 3 4; do
        if launch -np "$loading" -- "$CHECK" load "$dir/step-1" >"$tmp/load.log" 2>&1; then
            echo "ok: saved by $saved, loaded by $loading: $(grep -c 'bitwise equal' "$tmp/load.log") ranks checked"
        else
            fail "saved by $saved ranks, loaded by $loading: $(cat "$tmp/load.log")"
        fi
    done
done
"$SOV" ckpt inspect "$tmp/saved-by-3" | grep -Eq "^tensors +1100 \(110 f32, .*, 110 bool; [1-9][0-9]* sharded\)" ||
    fail "inspect: $("$SOV" ckpt inspect "$tmp/saved-by-3")"
finish
