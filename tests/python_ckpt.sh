#!/usr/bin/env bash
# The sovtrain Python package, installed the way a user installs it (libsovtrain by cmake --install, the package by
# pip install ./python), with PyPI's torch in the test venv:
#  - its unit tests, with numpy alone (torch's import blocked) and with torch;
#  - one format: tests/ckpt_state_check.c's general state (1100 tensors, every dtype, replicated and sharded)
#    saved from Python by 1, 2 and 3 ranks (gloo) loads bitwise in C at 1 and 2 ranks and verifies with
#    `sovtrain ckpt`; saved by C at 1, 2 and 3 ranks it loads bitwise in Python at 1 and 2 ranks, and at 1 rank
#    with numpy alone;
#  - DTensors saved as the ranks' boxes, loaded at other world sizes and into other layouts;
#  - encrypted with a key file: saved by Python at 2 ranks, loaded by C at 1 and 3; saved by C at 2, loaded by
#    Python at 2.
# usage: python_ckpt.sh SOVTRAIN BUILD_DIR CKPT_STATE_CHECK
. "$(dirname "$0")/lib.sh"
CHECK=$(realpath "$3")
need_torch
install_python "$2"
STATE=$TESTS/python/state_check.py

for py in "$TORCH_PY" "no-torch"; do
    if [ "$py" = no-torch ]; then
        run=(env SOVTRAIN_TEST_NO_TORCH=1 "$TORCH_PY")
    else
        run=("$py")
    fi
    if "${run[@]}" "$TESTS/python/test_checkpoint.py" >"$tmp/unit.log" 2>&1; then
        echo "ok: unit tests ($py): $(tail -n 1 "$tmp/unit.log")"
    else
        fail "unit tests ($py): $(cat "$tmp/unit.log")"
    fi
done

for saved in 1 2 3; do
    dir=$tmp/py-$saved
    if ! launch -np "$saved" -- "$TORCH_PY" "$STATE" save "$dir" >"$tmp/save.log" 2>&1; then
        fail "Python saving from $saved ranks: $(cat "$tmp/save.log")"
        continue
    fi
    "$SOV" ckpt verify "$dir/step-1" >"$tmp/verify.log" 2>&1 || fail "verify a Python checkpoint: $(cat "$tmp/verify.log")"
    for loading in 1 2; do
        if launch -np "$loading" -- "$CHECK" load "$dir/step-1" >"$tmp/load.log" 2>&1; then
            echo "ok: saved by Python at $saved ranks, loaded by C at $loading: $(grep -o 'rank [0-9] of [0-9]: [0-9]* tensors saved by [0-9] ranks read whole and by box, bitwise equal' "$tmp/load.log" | wc -l) ranks checked"
        else
            fail "saved by Python at $saved ranks, loaded by C at $loading: $(cat "$tmp/load.log")"
        fi
    done
done
"$SOV" ckpt ls "$tmp/py-3" | grep -q "step-1 .* ok" || fail "sovtrain ckpt ls: $("$SOV" ckpt ls "$tmp/py-3" 2>&1)"
"$SOV" ckpt export "$tmp/py-2/step-1" --format safetensors -o "$tmp/py.safetensors" >"$tmp/export.log" 2>&1 ||
    fail "export of a Python checkpoint: $(cat "$tmp/export.log")"

for saved in 1 2 3; do
    dir=$tmp/c-$saved
    if ! launch -np "$saved" -- "$CHECK" save "$dir" >"$tmp/save.log" 2>&1; then
        fail "C saving from $saved ranks: $(cat "$tmp/save.log")"
        continue
    fi
    for loading in 1 2; do
        if launch -np "$loading" -- "$TORCH_PY" "$STATE" load "$dir/step-1" >"$tmp/load.log" 2>&1; then
            echo "ok: saved by C at $saved ranks, loaded by Python at $loading: $(grep -o 'rank [0-9] of [0-9]: [0-9]* tensors saved by [0-9] ranks read whole and by box, bitwise equal' "$tmp/load.log" | wc -l) ranks checked"
        else
            fail "saved by C at $saved ranks, loaded by Python at $loading: $(cat "$tmp/load.log")"
        fi
    done
done
# DTensors (gloo, a CPU mesh): sharded by rows, by columns and replicated, saved at 2 ranks; loaded whole and into
# DTensors of another layout at 1 and 3 ranks
if launch -np 2 -- "$TORCH_PY" "$TESTS/python/dtensor_check.py" save "$tmp/dt" >"$tmp/dt.log" 2>&1; then
    for loading in 1 3; do
        if launch -np "$loading" -- "$TORCH_PY" "$TESTS/python/dtensor_check.py" load "$tmp/dt/step-1" \
            >"$tmp/dtl.log" 2>&1; then
            echo "ok: DTensors saved at 2 ranks, loaded at $loading, whole and resharded"
        else
            fail "DTensors loaded at $loading ranks: $(tail -20 "$tmp/dtl.log")"
        fi
    done
else
    fail "DTensors saved at 2 ranks: $(tail -20 "$tmp/dt.log")"
fi
if SOVTRAIN_TEST_NO_TORCH=1 "$TORCH_PY" "$STATE" load "$tmp/c-2/step-1" >"$tmp/load.log" 2>&1; then
    echo "ok: saved by C, loaded by Python with numpy alone"
else
    fail "saved by C, loaded by Python with numpy alone: $(cat "$tmp/load.log")"
fi
key=$tmp/key
openssl rand -out "$key" 32 && chmod 600 "$key"
if launch -np 2 -- "$TORCH_PY" "$STATE" save "$tmp/sealed-py" --key "$key" >"$tmp/save.log" 2>&1; then
    for loading in 1 3; do
        launch -np "$loading" -- "$CHECK" load "$tmp/sealed-py/step-1" --key "$key" >"$tmp/load.log" 2>&1 &&
            echo "ok: encrypted, saved by Python at 2 ranks, loaded by C at $loading" ||
            fail "encrypted, saved by Python, loaded by C at $loading: $(tail -5 "$tmp/load.log")"
    done
else
    fail "encrypted save from Python: $(tail -20 "$tmp/save.log")"
fi
if launch -np 2 -- "$CHECK" save "$tmp/sealed-c" --key "$key" >"$tmp/save.log" 2>&1 &&
    launch -np 2 -- "$TORCH_PY" "$STATE" load "$tmp/sealed-c/step-1" --key "$key" >"$tmp/load.log" 2>&1; then
    echo "ok: encrypted, saved by C at 2 ranks, loaded by Python at 2"
else
    fail "encrypted, saved by C, loaded by Python: $(tail -20 "$tmp/save.log" "$tmp/load.log")"
fi
finish
