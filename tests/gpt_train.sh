#!/usr/bin/env bash
# The GPT through the runtime, on the fortunes text: the same world-size equivalence and checkpoint guarantees as
# the MLP (1 x B vs 2 x B/2 vs 4 x B/4; bucketed overlap changes no bit; bit-exact resume; a 2-rank checkpoint
# resumes on 1 and 4 ranks), progress lines and metrics in tokens/s and nats per byte, and `sovtrain sample`
# from the checkpoint (plus its errors: a bad path, a checkpoint of another model).
. "$(dirname "$0")/lib.sh"
data=/usr/share/games/fortunes
[ -d "$data" ] || { echo "skip: $data missing (apt-get install fortunes)"; exit 77; }

C=(--model gpt --layers 2 --heads 2 --width 32 --context 32 --batch 8 --steps 24 --lr 3e-3 --warmup-steps 4
   --log-every 1 --eval-every 0 --threads 1)

# --- world sizes and buckets
"$SOV" train "${C[@]}" --run-dir "$tmp/one" --dump-params "$tmp/p_one" >"$tmp/one.log" 2>&1 \
    || fail "1 rank: $(cat "$tmp/one.log")"
grep -q "tokens/s" "$tmp/one.log" && grep -q "val loss .* nats/byte" "$tmp/one.log" \
    || fail "no tokens/s or val loss line: $(cat "$tmp/one.log")"
python3 - "$tmp/one/metrics.jsonl" <<'PY' || fail "metrics.jsonl lacks tokens_per_s / val_loss"
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
assert all("tokens_per_s" in e for e in ev if e["event"] == "step")
done = [e for e in ev if e["event"] == "done"][0]
assert done["tokens_per_s"] > 0 and 0 < done["val_loss"] < 5.6, done  # ln 256 = 5.55 at the start
PY
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/a" --ckpt-every 12 --keep 5 --dump-params "$tmp/pa" \
    >"$tmp/a.log" 2>&1 || fail "2 ranks: $(cat "$tmp/a.log")"
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/nb" --bucket-cap-mb 0 --dump-params "$tmp/pnb" \
    >"$tmp/nb.log" 2>&1 || fail "2 ranks, no buckets: $(cat "$tmp/nb.log")"
cmp -s "$tmp/pa" "$tmp/pnb" || fail "gradient buckets changed the GPT's bits"
launch -np 4 -- sovtrain train "${C[@]}" --run-dir "$tmp/four" --dump-params "$tmp/p_four" >"$tmp/four.log" 2>&1 \
    || fail "4 ranks: $(cat "$tmp/four.log")"
grep -q "parameters identical on all 4 ranks" "$tmp/four.log" || fail "4 ranks: no replica check"

# --- bit-exact resume at the same world size; other world sizes continue the same global batches
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/b" --resume "$tmp/a/checkpoints/step-12" \
    --dump-params "$tmp/pb" >"$tmp/b.log" 2>&1 || fail "resumed run: $(cat "$tmp/b.log")"
cmp -s "$tmp/pa" "$tmp/pb" || fail "resumed GPT weights differ from the uninterrupted run's"
[ "$(losses "$tmp/a/metrics.jsonl" 12)" = "$(losses "$tmp/b/metrics.jsonl" 12)" ] && [ -n "$(losses "$tmp/b/metrics.jsonl" 12)" ] \
    || fail "per-step losses after the resume differ"
echo "ok: GPT resume is bit-exact (weights and the losses of steps 13-24)"
for n in 1 4; do
    launch -np $n -- sovtrain train "${C[@]}" --run-dir "$tmp/r$n" --resume "$tmp/a/checkpoints/step-12" \
        --dump-params "$tmp/pr$n" >"$tmp/r$n.log" 2>&1 || fail "resume on $n ranks: $(cat "$tmp/r$n.log")"
done
python3 - "$tmp" <<'PY' || fail "world sizes drifted apart"
import array, sys
def load(p):
    a = array.array("f"); a.frombytes(open(p, "rb").read()); return a
t = sys.argv[1]
ref = load(t + "/p_one")
for name in ("pa", "p_four", "pr1", "pr4"):
    d = max(abs(x - y) for x, y in zip(ref, load(f"{t}/{name}")))
    print(f"GPT {name}: max |w - w(1 rank)| = {d:.2g}")
    assert d < 1e-4, name  # summation order only: 24 AdamW steps of a 2-layer transformer
PY

# --- sovtrain sample
"$SOV" sample --ckpt "$tmp/a/checkpoints" --prompt "Q: " --tokens 64 --seed 3 >"$tmp/s1" 2>"$tmp/s1.err" \
    || fail "sample: $(cat "$tmp/s1.err")"
"$SOV" sample --ckpt "$tmp/a/checkpoints/step-24" --prompt "Q: " --tokens 64 --seed 3 >"$tmp/s2" 2>/dev/null
[ "$(head -c 3 "$tmp/s1")" = "Q: " ] && [ "$(wc -c <"$tmp/s1")" -ge 67 ] || fail "sample printed: $(cat "$tmp/s1")"
cmp -s "$tmp/s1" "$tmp/s2" || fail "the same seed and checkpoint sampled different text"
grep -q "step-24 (step 24)" "$tmp/s1.err" || fail "sample did not name the checkpoint: $(cat "$tmp/s1.err")"
echo "ok: sample: $(head -c 67 "$tmp/s1" | tr '\n' ' ')"
# Checkpoints written before the model's settings were recorded as text hold the GPT's as integers (and an "hidden"
# of the MLP's); sample rebuilds the same model from them. A checkpoint lacking a setting is refused.
rewrite_config() { # rewrite_config CKPT_COPY old|no-width: edits meta.config, then reseals (format doc 2.1)
    /usr/bin/python3 - "$1/manifest.json" "$2" <<'PY'
import json, sys, xxhash
path, how = sys.argv[1], sys.argv[2]
m = json.load(open(path))
cfg = m["meta"]["config"]
if how == "old":
    for k in ("layers", "heads", "width", "context"):
        cfg[k] = int(cfg[k])
    cfg["hidden"] = "1024,1024"
else:
    del cfg["width"]
m["manifest_xxh3"] = "0" * 16
m["manifest_xxh3"] = "%016x" % xxhash.xxh3_64_intdigest(json.dumps(m, indent=1).encode())
open(path, "w").write(json.dumps(m, indent=1))
PY
}
if /usr/bin/python3 -c "import xxhash" 2>/dev/null; then
    cp -r "$tmp/a/checkpoints/step-24" "$tmp/old" && cp -r "$tmp/a/checkpoints/step-24" "$tmp/nowidth"
    rewrite_config "$tmp/old" old && rewrite_config "$tmp/nowidth" no-width || fail "rewriting meta.config"
    "$SOV" sample --ckpt "$tmp/old" --prompt "Q: " --tokens 64 --seed 3 >"$tmp/s3" 2>"$tmp/s3.err" \
        || fail "sample from an old-style checkpoint: $(cat "$tmp/s3.err")"
    cmp -s "$tmp/s1" "$tmp/s3" || fail "integer settings in meta.config sampled different text"
    expect_error 1 "lacks the gpt model's setting \"width\"" "$SOV" sample --ckpt "$tmp/nowidth"
else
    echo "skip: old-style checkpoints (/usr/bin/python3 lacks xxhash: apt-get install python3-xxhash)"
fi
expect_error 1 "not a checkpoint or a directory of checkpoints" "$SOV" sample --ckpt "$tmp/nowhere"
expect_error 2 "--ckpt PATH is required" "$SOV" sample
"$SOV" train --hidden 8 --steps 2 --batch 16 --eval-every 0 --run-dir "$tmp/mlp" --ckpt-every 2 >/dev/null 2>&1 \
    || fail "mlp run for the wrong-model check"
expect_error 2 "holds a mlp model, which does not generate text" "$SOV" sample --ckpt "$tmp/mlp/checkpoints"
expect_error 2 "--width 30 is not a multiple of --heads 4" "$SOV" train --model gpt --width 30 --heads 4
expect_error 2 '--context "9000": expected an integer in 1..8192' "$SOV" train --model gpt --context 9000
expect_error 1 "--data $tmp/nowhere" "$SOV" train --model gpt --data "$tmp/nowhere"

[ "$failures" -eq 0 ] || exit 1
echo "gpt_train: all checks passed"
