#!/usr/bin/env bash
# bench/ckpt_python.py runs end to end on a small state (GPT-2 at width 16) with the installed package and the test
# venv's torch: every figure is present and positive, every ratio computed, and each restore gave the state back
# (the bench checks that and fails otherwise). Speeds are not judged here: the bench prints them beside targets.
# usage: bench_ckpt_python.sh SOVTRAIN BUILD_DIR
. "$(dirname "$0")/lib.sh"
need_torch
install_python "$2"
if ! (cd "$tmp" && "$TORCH_PY" "$TESTS/../bench/ckpt_python.py" --build "$2" --width 16 --tries 2 \
        >"$tmp/table" 2>"$tmp/json"); then
    fail "bench/ckpt_python.py: $(cat "$tmp/table" "$tmp/json")"
    finish
fi
cat "$tmp/table"
python3 - "$tmp/json" <<'PY' || fail "the JSON line: $(cat "$tmp/json")"
import json, sys
j = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
for k in ("memcpy", "stall", "sov_save", "c_save", "torch_save", "dcp_fs_save", "dcp_sov_save", "sov_load",
          "sov_load_into", "c_restore", "torch_load", "dcp_fs_load", "dcp_sov_load"):
    assert j["seconds"][k] > 0, k
assert len(j["ratios"]) == 9 and all(v > 0 for v in j["ratios"].values()), j["ratios"]
assert 1 < j["ratio"] <= j["c"]["entropy_bound"] * 1.001, (j["ratio"], j["c"])
print("JSON line: every figure present and positive")
PY
finish
