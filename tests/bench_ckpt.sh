#!/usr/bin/env bash
# bench/ckpt_perf runs end to end on a small state, with its torch.save / torch.load peer where Debian's
# python3-torch is installed: each case's JSON line has every figure, each positive, and the peer's two; every
# restore came back bitwise (ckpt_perf checks each and fails otherwise); the peer's files are gone afterwards. A peer
# that cannot start is reported and left out; one whose try fails, or that answers nonsense, stops the bench with
# the answer. Speeds are not judged here: bench/ckpt.py prints them beside their targets.
# usage: bench_ckpt.sh SOVTRAIN CKPT_PERF
. "$(dirname "$0")/lib.sh"
PERF=$2
PEER=$TESTS/../bench/peers/torch_ckpt.py
with_torch=0
/usr/bin/python3 -c "import torch" 2>/dev/null && with_torch=1

shm_before=$(ls /dev/shm 2>/dev/null | grep -c '^sovtrain-ckpt-perf-')
"$PERF" --dir "$tmp" --mib 4 --threads 2 --gpt2 16 --peer "$PEER" >"$tmp/table" 2>"$tmp/json" ||
    fail "ckpt_perf exited $?: $(cat "$tmp/table" "$tmp/json")"
cat "$tmp/table"
python3 - "$tmp/json" "$with_torch" <<'PY' || fail "the JSON lines: $(cat "$tmp/json")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
want = ["save_gbs", "restore_gbs", "ratio", "stall_ms", "entropy_bound", "zstd1_ratio", "disk_gbs", "memcpy_ms"]
if sys.argv[2] == "1":
    want += ["torch_save_gbs", "torch_load_gbs"]
assert [j["case"] for j in lines] == ["gauss-f32", "gauss-bf16", "gpt2-adamw", "gpt2-bf16"], [j.get("case") for j in lines]
# GPT-2's 148 tensors at width 16: every one of them 3 times (weights and AdamW's two moments)
gpt2 = 3 * (50257 * 16 + 1024 * 16 + 12 * (2 * 16 + 16 * 48 + 48 + 16 * 16 + 16 + 2 * 16 + 16 * 64 + 64 + 64 * 16 + 16) + 2 * 16)
for j in lines:
    for k in want:
        assert k in j and j[k] > 0, f"{j['case']}: {k} = {j.get(k)}"
    size = {"gauss-f32": 4 << 20, "gauss-bf16": 2 << 20, "gpt2-adamw": 4 * gpt2, "gpt2-bf16": 2 * gpt2}
    assert j["bytes"] == size[j["case"]], j
    assert j["ratio"] <= j["entropy_bound"] * 1.001, j  # nothing order-0 beats the bound
peer = " with the torch peer's" if sys.argv[2] == "1" else ""
print("JSON lines:", len(lines), "cases, every figure present" + peer)
PY
left=$(find "$tmp" \( -name '*.raw' -o -name '*.pt' \) | head -3)
[ -z "$left" ] || fail "the peer's files were left behind: $left"
shm_after=$(ls /dev/shm 2>/dev/null | grep -c '^sovtrain-ckpt-perf-')
[ "$shm_after" -le "$shm_before" ] || fail "the state's copy for the peer was left in /dev/shm: $(ls /dev/shm)"
[ "$with_torch" = 1 ] || echo "note: /usr/bin/python3 has no torch; the peer was skipped"

# A peer that cannot start (exit 77, as without torch): the bench goes on without its figures, and says so.
echo 'import sys; sys.exit(77)' >"$tmp/peer77.py"
"$PERF" --dir "$tmp" --mib 1 --gpt2 0 --peer "$tmp/peer77.py" >"$tmp/out77" 2>&1 ||
    fail "without a peer: $(cat "$tmp/out77")"
grep -q 'torch peer did not start.*status 77' "$tmp/out77" || fail "no word on the missing peer: $(cat "$tmp/out77")"
if grep '^{' "$tmp/out77" | grep -q torch_; then fail "torch figures without a peer: $(cat "$tmp/out77")"; fi
# A peer whose try fails, or that answers nonsense: the bench stops, naming the try and the answer.
cat >"$tmp/peer_bad.py" <<'PY'
import os, sys
print("ready", os.path.getsize(sys.argv[1]), flush=True)
for line in sys.stdin:
    print(os.environ["PEER_ANSWER"], flush=True)
PY
for answer in "error: No space left on device" "hello"; do
    export PEER_ANSWER=$answer
    expect_error 1 "the torch peer's save failed: $answer" "$PERF" --dir "$tmp" --mib 1 --gpt2 0 --peer "$tmp/peer_bad.py"
done
finish
