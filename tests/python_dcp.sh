#!/usr/bin/env bash
# torch.distributed.checkpoint through sovtrain.dcp's StorageWriter and StorageReader (tests/python/dcp_check.py),
# real jobs with gloo and PyPI's torch from the test venv:
#  - saved at 2 ranks, loaded at 1 (no process group) and at 3 (DTensors resharded): every tensor equal;
#  - dcp.async_save, and `sovtrain ckpt verify|ls|inspect|export` on what it wrote;
#  - 2000 sampled single-byte corruptions over every file: all detected;
#  - a save killed (kill -9 of every rank) after the ranks wrote their data, before the commit: the previous
#    checkpoint stays the latest and loads, and the next save succeeds;
#  - encrypted (a key file): saved at 2 ranks, loaded at 3; refused without the key; 500 corruptions detected.
# usage: python_dcp.sh SOVTRAIN BUILD_DIR
. "$(dirname "$0")/lib.sh"
need_torch
install_python "$2"
CHECK=("$TORCH_PY" "$TESTS/python/dcp_check.py")
D=$tmp/dcp

launch -np 2 -- "${CHECK[@]}" save "$D" 1 >"$tmp/save.log" 2>&1 || fail "save at 2 ranks: $(tail -20 "$tmp/save.log")"
"${CHECK[@]}" load "$D/step-1" >"$tmp/load1.log" 2>&1 && grep -q "every tensor equal" "$tmp/load1.log" &&
    echo "ok: saved at 2 ranks, loaded at 1: every tensor equal" || fail "load at 1 rank: $(tail -20 "$tmp/load1.log")"
if launch -np 3 -- "${CHECK[@]}" load "$D/step-1" >"$tmp/load3.log" 2>&1 &&
    [ "$(grep -o "rank [0-9]: every tensor equal" "$tmp/load3.log" | sort -u | wc -l)" -eq 3 ]; then
    echo "ok: saved at 2 ranks, loaded at 3 (resharded): every tensor equal"
else
    fail "load at 3 ranks: $(tail -20 "$tmp/load3.log")"
fi

launch -np 2 -- "${CHECK[@]}" save "$D" 2 --async >"$tmp/async.log" 2>&1 || fail "async_save: $(tail -20 "$tmp/async.log")"
"${CHECK[@]}" load "$D" >"$tmp/load.log" 2>&1 && grep -q "every tensor equal" "$tmp/load.log" &&
    [ "$(cat "$D/latest")" = step-2 ] && echo "ok: dcp.async_save at 2 ranks, latest step-2 loads" ||
    fail "async_save then load: $(tail -20 "$tmp/load.log")"
"$SOV" ckpt verify "$D/step-2" >"$tmp/v.log" 2>&1 || fail "sovtrain ckpt verify: $(cat "$tmp/v.log")"
"$SOV" ckpt ls "$D" | grep -q "step-2 .* ok" || fail "sovtrain ckpt ls: $("$SOV" ckpt ls "$D" 2>&1)"
"$SOV" ckpt inspect "$D/step-2" | grep -q '"dcp":{"version"' || fail "sovtrain ckpt inspect shows no DCP metadata"
"$SOV" ckpt export "$D/step-2" --format safetensors -o "$tmp/dcp.safetensors" >"$tmp/x.log" 2>&1 ||
    fail "sovtrain ckpt export: $(cat "$tmp/x.log")"
echo "ok: sovtrain ckpt verify, ls, inspect and export on a DCP checkpoint"

cp -r "$D/step-2" "$tmp/victim"
if "${CHECK[@]}" corrupt "$tmp/victim" 2000 >"$tmp/corrupt.log" 2>/dev/null; then
    echo "ok: $(tail -n 1 "$tmp/corrupt.log")"
else
    fail "corruptions: $(grep -v "^ " "$tmp/corrupt.log" | tail -5)"
fi

# a save of step 3 held after the ranks wrote their data (the writer's test hold), then every rank killed
SOVTRAIN_TEST_CKPT_HOLD=$tmp/hold "$SOV" launch -np 2 --max-restarts 0 -- "${CHECK[@]}" save "$D" 3 >"$tmp/kill.log" 2>&1 &
job=$!
for _ in $(seq 1200); do [ -e "$tmp/hold.rank0" ] && [ -e "$tmp/hold.rank1" ] && break; sleep 0.05; done
if [ -e "$tmp/hold.rank0" ] && [ -e "$tmp/hold.rank1" ]; then
    kill -9 "$(cat "$tmp/hold.rank0")" "$(cat "$tmp/hold.rank1")"
else
    fail "killed save: the ranks never reached the hold: $(tail -5 "$tmp/kill.log")"
fi
wait "$job" && fail "killed save: the job exited 0"
if [ "$(cat "$D/latest")" = step-2 ] && [ ! -e "$D/step-3" ] && "${CHECK[@]}" load "$D" >"$tmp/l.log" 2>&1 &&
    grep -q "every tensor equal" "$tmp/l.log"; then
    echo "ok: a save killed before its commit: step-2 stays the latest and loads"
else
    fail "killed save: latest $(cat "$D/latest"), $(ls "$D"): $(tail -5 "$tmp/l.log")"
fi
launch -np 2 -- "${CHECK[@]}" save "$D" 3 >"$tmp/again.log" 2>&1 && [ "$(cat "$D/latest")" = step-3 ] &&
    echo "ok: the next save of step 3 commits" || fail "save after the killed one: $(tail -10 "$tmp/again.log")"

key=$tmp/key
openssl rand -out "$key" 32 && chmod 600 "$key"
E=$tmp/sealed
launch -np 2 -- "${CHECK[@]}" save "$E" 1 --key "$key" >"$tmp/save.log" 2>&1 || fail "encrypted save: $(tail -20 "$tmp/save.log")"
if launch -np 3 -- "${CHECK[@]}" load "$E/step-1" --key "$key" >"$tmp/load3.log" 2>&1 &&
    [ "$(grep -o "rank [0-9]: every tensor equal" "$tmp/load3.log" | sort -u | wc -l)" -eq 3 ]; then
    echo "ok: encrypted, saved at 2 ranks, loaded at 3 (resharded): every tensor equal"
else
    fail "encrypted load at 3 ranks: $(tail -20 "$tmp/load3.log")"
fi
"$SOV" ckpt verify "$E/step-1" --ckpt-key-file "$key" | grep -q "authenticated, decrypted" || fail "verify with the key"
"${CHECK[@]}" load "$E/step-1" >"$tmp/nokey.log" 2>&1 && fail "an encrypted DCP checkpoint loaded without its key"
grep -q "is encrypted with key id local:" "$tmp/nokey.log" && echo "ok: without the key: refused, naming the key id" ||
    fail "no key: $(tail -5 "$tmp/nokey.log")"
if "${CHECK[@]}" corrupt "$E/step-1" 500 --key "$key" >"$tmp/corrupt.log" 2>/dev/null; then
    echo "ok: encrypted: $(tail -n 1 "$tmp/corrupt.log")"
else
    fail "encrypted corruptions: $(grep -v "^ " "$tmp/corrupt.log" | tail -5)"
fi
finish
