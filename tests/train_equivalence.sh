#!/usr/bin/env bash
# Data parallelism changes nothing but summation order: after K steps, 1 rank x B, 2 ranks x B/2 and
# 4 ranks x B/4 from the same seed give the same weights within a tight tolerance, whatever the collectives
# backend; bucketed overlap changes no bit; every multi-rank job checks that its replicas are bitwise identical
# at the end; metrics.jsonl carries the documented events.
. "$(dirname "$0")/lib.sh"
need_data

common=(--hidden 64,32 --steps 40 --batch 64 --lr 2e-3 --warmup-steps 5 --log-every 10 --threads 1)
"$SOV" train "${common[@]}" --run-dir "$tmp/r1" --dump-params "$tmp/p1" >"$tmp/log1" 2>&1 || fail "1 rank: $(cat "$tmp/log1")"
job() { # NAME NP [ARGS...]: a training job whose final parameters land in $tmp/pNAME
    local name=$1 n=$2
    shift 2
    launch -np "$n" -- sovtrain train "${common[@]}" "$@" --run-dir "$tmp/r$name" --dump-params "$tmp/p$name" \
        >"$tmp/log$name" 2>&1 || fail "$name: $(cat "$tmp/log$name")"
    grep -q "parameters identical on all $n ranks" "$tmp/log$name" || fail "$name: no replica check: $(cat "$tmp/log$name")"
}
job 2 2                                   # auto: shm, gradient buckets overlapped with backward
job 2-nobuckets 2 --bucket-cap-mb 0       # one allreduce after backward
job 2-smallbuckets 2 --bucket-cap-mb 0.01 # a bucket per layer
job 2-mpi 2 --comm mpi
job 4 4
SOVTRAIN_HIER_RANKS_PER_HOST=2 job 4-hier 4 --comm hier
grep -q '"comm":"shm"' "$tmp/r2/metrics.jsonl" || fail "2 ranks on one host did not pick shm"
for name in 2-nobuckets 2-smallbuckets; do
    cmp -s "$tmp/p2" "$tmp/p$name" || fail "$name: parameters differ from the overlapped run's: buckets changed bits"
done
"$SOV" train "${common[@]}" --seed 2 --run-dir "$tmp/rs" --dump-params "$tmp/ps" >/dev/null 2>&1 || fail "seed 2 run"

python3 - "$tmp" <<'PY' || fail "weights differ"
import array, sys
d = sys.argv[1]
def load(name):
    a = array.array("f")
    with open(f"{d}/{name}", "rb") as f:
        a.frombytes(f.read())
    return a
def maxdiff(a, b):
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) for x, y in zip(a, b))
p1 = load("p1")
tol = 1e-5
for name in ("2", "2-mpi", "4", "4-hier"):
    d_n = maxdiff(p1, load(f"p{name}"))
    print(f"max |w(1 rank) - w({name})| = {d_n:.3g} (tolerance {tol})")
    if d_n > tol:
        sys.exit(1)
# The comparison has teeth: another seed lands far away.
d_seed = maxdiff(p1, load("ps"))
print(f"max |w(seed 1) - w(seed 2)| = {d_seed:.3g}")
if d_seed < 100 * tol:
    sys.exit(1)
PY

python3 - "$tmp/r2/metrics.jsonl" <<'PY' || fail "metrics.jsonl"
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
kinds = [e["event"] for e in events]
assert kinds[0] == "start" and kinds[-1] == "done", kinds
for e in events:
    need = {"step": ("step", "loss", "lr", "samples_per_s"), "eval": ("step", "test_loss", "test_acc"),
            "done": ("step", "test_acc", "samples_per_s", "params_xxh3")}.get(e["event"], ())
    missing = [k for k in need if k not in e]
    assert not missing, (e, missing)
steps = [e["step"] for e in events if e["event"] == "step"]
assert steps == [10, 20, 30, 40], steps
assert events[-1]["world_size"] == 2
print("metrics.jsonl:", len(events), "events, kinds", sorted(set(kinds)))
PY
finish
