#!/usr/bin/env bash
# The README's main job (`make demo`: 2 ranks, the arguments in examples/demo.args) reaches test accuracy >= 0.88
# on Fashion-MNIST, and its metrics say so.
. "$(dirname "$0")/lib.sh"
need_data
read -r -a demo_args <"$TESTS/../examples/demo.args"
launch -np 2 -- sovtrain train "${demo_args[@]}" --run-dir "$tmp/demo" >"$tmp/log" 2>&1 || fail "demo job failed: $(cat "$tmp/log")"
grep -E '\] (eval|done)' "$tmp/log"
python3 - "$tmp/demo/metrics.jsonl" <<'PY' || fail "accuracy below 0.88"
import json, sys
done = [json.loads(l) for l in open(sys.argv[1]) if '"done"' in l][-1]
print(f"test accuracy {done['test_acc']:.4f} (target 0.88), {done['samples_per_s']:.0f} samples/s on 2 ranks")
sys.exit(0 if done["test_acc"] >= 0.88 else 1)
PY
finish
