#!/usr/bin/env bash
# Checkpoints of real training jobs: bit-exact resume, resume at other world sizes, SIGTERM and SIGINT, timed saves
# and --keep, --resume auto, kill -9 in the middle of a save, damaged checkpoints (verify fails, resume falls back),
# sovtrain ckpt, safetensors export read back by an independent reader. (A full disk: ckpt_full_disk.sh.)
. "$(dirname "$0")/lib.sh"
need_data

C=(--hidden 32,16 --batch 64 --steps 40 --warmup-steps 5 --log-every 1 --threads 1 --eval-every 0)

# --- bit-exact resume: 40 steps straight vs resumed from the step-20 checkpoint of the same run
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/a" --ckpt-every 20 --keep 5 --dump-params "$tmp/pa" \
    >"$tmp/a.log" 2>&1 || fail "uninterrupted run: $(cat "$tmp/a.log")"
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/b" --resume "$tmp/a/checkpoints/step-20" \
    --dump-params "$tmp/pb" >"$tmp/b.log" 2>&1 || fail "resumed run: $(cat "$tmp/b.log")"
grep -q "resume: continuing from $tmp/a/checkpoints/step-20 (step 20 of 40)" "$tmp/b.log" || fail "no resume line: $(cat "$tmp/b.log")"
cmp -s "$tmp/pa" "$tmp/pb" || fail "resumed weights differ from the uninterrupted run's"
[ "$(losses "$tmp/a/metrics.jsonl" 20)" = "$(losses "$tmp/b/metrics.jsonl" 20)" ] && [ -n "$(losses "$tmp/b/metrics.jsonl" 20)" ] \
    || fail "per-step losses after the resume differ"
echo "ok: resume is bit-exact (weights and the losses of steps 21-40)"

# --- a 2-rank checkpoint resumes on 1 and 4 ranks, continuing the same global sample order
"$SOV" train "${C[@]}" --run-dir "$tmp/one" --dump-params "$tmp/p_one" >/dev/null 2>&1 || fail "1-rank run"
for n in 1 4; do
    launch -np $n -- sovtrain train "${C[@]}" --run-dir "$tmp/r$n" --resume "$tmp/a/checkpoints/step-20" \
        --dump-params "$tmp/p$n" >"$tmp/r$n.log" 2>&1 || fail "resume on $n ranks: $(cat "$tmp/r$n.log")"
done
python3 - "$tmp" <<'PY' || fail "resume at another world size drifted"
import array, sys
def load(p):
    a = array.array("f"); a.frombytes(open(p, "rb").read()); return a
ref = load(sys.argv[1] + "/p_one")
for n in (1, 4):
    d = max(abs(x - y) for x, y in zip(ref, load(f"{sys.argv[1]}/p{n}")))
    print(f"2-rank checkpoint resumed on {n} rank(s): max |w - w(uninterrupted)| = {d:.2g}")
    assert d < 1e-5
PY

# --- SIGTERM and SIGINT: the job saves at the step it reached, says where, and exits 0 (launch_restart resumes
# from such a checkpoint bit-exactly)
for sig in TERM INT; do
    "$SOV" train "${C[@]}" --steps 100000 --log-every 1 --run-dir "$tmp/sig$sig" --ckpt-dir "$tmp/sig$sig/ck" \
        >"$tmp/sig$sig.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do grep -q '"step":3,' "$tmp/sig$sig/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
    kill -"$sig" "$pid"
    wait "$pid"
    rc=$?
    [ "$rc" -eq 0 ] || fail "SIG$sig: exit $rc: $(tail -3 "$tmp/sig$sig.log")"
    grep -q "stopping at step [0-9]* on SIG$sig" "$tmp/sig$sig.log" &&
        grep -q "checkpoint: saved $tmp/sig$sig/ck/step-" "$tmp/sig$sig.log" ||
        fail "SIG$sig: no checkpoint or stop line: $(tail -5 "$tmp/sig$sig.log")"
    "$SOV" ckpt verify "$tmp/sig$sig/ck" >/dev/null || fail "SIG$sig checkpoint does not verify"
    echo "ok: SIG$sig -> $(grep -o "stopping at step [0-9]* on SIG$sig" "$tmp/sig$sig.log"), exit 0"
done

# --- timed saves (--ckpt-every-s; here every step) and --keep: 12 saves, the last two kept, latest the final step
"$SOV" train "${C[@]}" --steps 12 --ckpt-every-s 0.000001 --keep 2 --run-dir "$tmp/keep" >"$tmp/keep.log" 2>&1 ||
    fail "timed saves: $(tail -3 "$tmp/keep.log")"
saves=$(grep -c "checkpoint: step [0-9]* snapshot" "$tmp/keep.log")
kept=$(cd "$tmp/keep/checkpoints" && echo step-*)
[ "$saves" -eq 12 ] || fail "timed saves: $saves saves in 12 steps, expected one per step"
[ "$kept" = "step-11 step-12" ] && [ "$(cat "$tmp/keep/checkpoints/latest")" = "step-12" ] ||
    fail "--keep 2: kept $kept, latest $(cat "$tmp/keep/checkpoints/latest")"
echo "ok: --ckpt-every-s saved $saves times, --keep 2 kept $kept"

# --- --resume auto (as make demo runs): a new directory starts fresh, the second run continues from the first's
for run in 1 2; do
    "$SOV" train "${C[@]}" --steps $((run * 5)) --resume auto --run-dir "$tmp/auto" >"$tmp/auto$run.log" 2>&1 ||
        fail "--resume auto, run $run: $(tail -3 "$tmp/auto$run.log")"
done
grep -q "resume: no usable checkpoint under $tmp/auto/checkpoints: starting fresh" "$tmp/auto1.log" ||
    fail "--resume auto did not say it starts fresh: $(head -5 "$tmp/auto1.log")"
grep -q "resume: continuing from $tmp/auto/checkpoints/step-5 (step 5 of 10)" "$tmp/auto2.log" ||
    fail "--resume auto did not continue from step-5: $(head -5 "$tmp/auto2.log")"
echo "ok: --resume auto started fresh, then continued from step-5"

# --- kill -9 of a rank while a save is in flight: the previous checkpoint stays latest and resumes; the partial
# directory is never used and the next save removes it
cp -r "$tmp/a/checkpoints" "$tmp/kc" # step-20 and step-40, latest = step-40
SOVTRAIN_TEST_CKPT_HOLD="$tmp/hold" launch -np 2 --max-restarts 0 -- sovtrain train "${C[@]}" --steps 60 --run-dir "$tmp/k" \
    --ckpt-dir "$tmp/kc" --resume latest --keep 5 >"$tmp/k.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -s "$tmp/hold.rank1" ] && [ -s "$tmp/hold.rank0" ] && break; sleep 0.1; done
[ -s "$tmp/hold.rank1" ] || fail "kill test: the save never reached its hold point: $(cat "$tmp/k.log")"
kill -9 "$(cat "$tmp/hold.rank1")"
wait "$job" && fail "kill test: the job survived the death of rank 1"
[ "$(cat "$tmp/kc/latest")" = "step-40" ] || fail "kill test: latest moved to $(cat "$tmp/kc/latest")"
[ -d "$tmp/kc/step-60.partial" ] && [ ! -e "$tmp/kc/step-60.partial/manifest.json" ] \
    || fail "kill test: expected an uncommitted step-60.partial: $(ls "$tmp/kc")"
"$SOV" ckpt verify "$tmp/kc" | grep -q "step-40: ok" || fail "kill test: step-40 does not verify after the crash"
launch -np 2 -- sovtrain train "${C[@]}" --steps 60 --run-dir "$tmp/k2" --ckpt-dir "$tmp/kc" --resume latest \
    --keep 5 >"$tmp/k2.log" 2>&1 || fail "kill test: resume after the crash failed: $(cat "$tmp/k2.log")"
grep -q "continuing from $tmp/kc/step-40 (step 40 of 60)" "$tmp/k2.log" || fail "kill test: did not resume step 40"
ls "$tmp/kc" | grep -q partial && fail "kill test: the next save left $(ls "$tmp/kc" | grep partial)"
[ "$(cat "$tmp/kc/latest")" = "step-60" ] || fail "kill test: latest is $(cat "$tmp/kc/latest") after the resumed run"
echo "ok: kill -9 during a save: step-40 stayed latest, resumed, the partial step-60 was replaced"

# --- damage: sovtrain ckpt verify names it; --resume latest falls back to the previous good checkpoint
cp -r "$tmp/a/checkpoints" "$tmp/dc"
"$SOV" ckpt ls "$tmp/dc" >"$tmp/ls.txt" || fail "ckpt ls of good checkpoints failed: $(cat "$tmp/ls.txt")"
grep -q "step-40 .* ok (latest)" "$tmp/ls.txt" || fail "ckpt ls: $(cat "$tmp/ls.txt")"
"$SOV" ckpt inspect "$tmp/dc/step-40" >"$tmp/inspect.txt" || fail "ckpt inspect failed: $(cat "$tmp/inspect.txt")"
grep -q "^step        40$" "$tmp/inspect.txt" && grep -q "^world size  2 (writers)$" "$tmp/inspect.txt" &&
    grep -q "^buffers  *replicated.f32\[" "$tmp/inspect.txt" &&
    grep -q "^tensors     8 (8 f32; 0 sharded)$" "$tmp/inspect.txt" ||
    fail "ckpt inspect: $(cat "$tmp/inspect.txt")"
# the latest pointer is a path every ckpt command takes: the checkpoint it names
"$SOV" ckpt inspect "$tmp/dc/latest" | grep -q "^checkpoint  $tmp/dc/step-40$" &&
    "$SOV" ckpt verify "$tmp/dc/latest" | grep -q "step-40: ok" ||
    fail "ckpt inspect/verify DIR/latest: $("$SOV" ckpt verify "$tmp/dc/latest" 2>&1)"
echo "junk" >"$tmp/not-a-pointer"
expect_error 1 "not a checkpoint, nor a latest pointer naming one" "$SOV" ckpt verify "$tmp/not-a-pointer"
python3 -c "
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 0x10; open(p, 'wb').write(b)" \
    "$tmp/dc/step-40/rank-1.bin"
out=$("$SOV" ckpt verify "$tmp/dc/step-40" 2>&1) && fail "verify passed a damaged checkpoint"
grep -q "rank-1.bin chunk at byte" <<<"$out" || fail "verify did not name the file and chunk: $out"
"$SOV" ckpt ls "$tmp/dc" | grep -q "step-40 .*DAMAGED" || fail "ckpt ls did not flag the damage"
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/d" --ckpt-dir "$tmp/dc" --resume latest \
    --dump-params "$tmp/pd" >"$tmp/d.log" 2>&1 || fail "fallback resume failed: $(cat "$tmp/d.log")"
grep -q "resume: skipping $tmp/dc/step-40" "$tmp/d.log" && grep -q "continuing from $tmp/dc/step-20" "$tmp/d.log" \
    || fail "no fallback to step-20: $(cat "$tmp/d.log")"
cmp -s "$tmp/pa" "$tmp/pd" || fail "fallback resume did not reproduce the uninterrupted weights"
echo "ok: damage found by verify ($(head -c 160 <<<"$out")...), resume fell back to step-20"

# --- export to safetensors, read back by an independent reader (the published format, parsed here)
"$SOV" ckpt export "$tmp/a/checkpoints/step-40" --format safetensors -o "$tmp/model.safetensors" >/dev/null \
    || fail "export failed"
python3 - "$tmp/model.safetensors" "$tmp/pa" <<'PY' || fail "safetensors export does not match the weights"
import array, json, struct, sys
blob = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
header = json.loads(blob[8:8 + n])
data = blob[8 + n:]
flat = array.array("f"); flat.frombytes(open(sys.argv[2], "rb").read())
names = [k for k in header if k != "__metadata__"]
assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
                 "layers.2.bias", "adamw.m", "adamw.v"], names
assert header["adamw.m"]["shape"] == [len(flat)], header["adamw.m"]
got = array.array("f")
for k in names[:-2]:
    t = header[k]
    assert t["dtype"] == "F32"
    b, e = t["data_offsets"]
    count = 1
    for d in t["shape"]: count *= d
    assert e - b == 4 * count, (k, t)
    got.frombytes(data[b:e])
assert got == flat, "tensor values differ"
print(f"safetensors: {len(names)} tensors; the model's {len(got)} values identical to the trained parameters")
PY

# --- the way back in: --init-from the exported file seeds exactly those parameters (lr 0: one step changes nothing)
"$SOV" train "${C[@]}" --steps 1 --lr 0 --weight-decay 0 --init-from "$tmp/model.safetensors" --run-dir "$tmp/init" \
    --dump-params "$tmp/pinit" >"$tmp/init.log" 2>&1 || fail "--init-from failed: $(cat "$tmp/init.log")"
cmp -s "$tmp/pa" "$tmp/pinit" || fail "--init-from did not load the exported parameters"
expect_error 1 "tensor shape differs from the model's: layers.1.weight" "$SOV" train --hidden 32 --steps 1 --run-dir "$tmp/init2" \
    --init-from "$tmp/model.safetensors"
head -c 100 "$tmp/model.safetensors" >"$tmp/cut.safetensors"
expect_error 1 "header length exceeds the file" "$SOV" train "${C[@]}" --init-from "$tmp/cut.safetensors" --run-dir "$tmp/i3"
echo "ok: --init-from round trip"

# --- bad input to the tools
expect_error 1 "no checkpoint under $tmp/nothing" "$SOV" ckpt verify "$tmp/nothing"
expect_error 2 "unknown subcommand" "$SOV" ckpt frobnicate x
expect_error 1 "--resume latest: no usable checkpoint under $tmp/empty" "$SOV" train "${C[@]}" --run-dir "$tmp/e" \
    --ckpt-dir "$tmp/empty" --resume latest
finish
