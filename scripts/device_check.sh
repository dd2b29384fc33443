#!/usr/bin/env bash
# device_check.sh: every GPU check and GPU benchmark in one run, on a machine with an NVIDIA GPU, from a copy of
# this tree with a build and the bundle of scripts/device_bundle.sh carried beside it (see docs/gpu.md).
#
#   bash scripts/device_check.sh [OUTDIR]      (default $OUT, else /tmp/sovtrain-device)
#
# Writes into OUTDIR: gpu_tests.log (ctest -L gpu), allreduce.log (bench/allreduce_perf, nccl), nccl_tests.log
# (the peer: NVIDIA's nccl-tests all_reduce_perf), train_bench.log (bench/train.py --device cuda, the peer is
# PyTorch on the same GPU), ckpt_stall.log (checkpoint stall of a GPU job with 442 MB of state), env.log (the
# set-up, and the peer's build), summary.txt: 8 files.
# Nothing stops at the first failure: each part's exit status goes into summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/sovtrain-device}}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"

step() { # step NAME LOG CMD...: runs CMD with its output in LOG, records its exit status and time
    local name=$1 log=$2 t0=$SECONDS rc
    shift 2
    echo "== $name: $*" | tee -a "$summary"
    "$@" >"$log" 2>&1
    rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$summary"
}

set -- # device_env.sh reads the sourcing script's arguments as its own
# shellcheck source=scripts/device_env.sh
source scripts/device_env.sh >"$out/env.log" 2>&1 || { cat "$out/env.log"; exit 1; }
{ nvidia-smi -L; build/sovtrain version; } >>"$summary" 2>&1

# The peer's build takes a minute or two: it runs beside the tests.
bash scripts/device_nccl_tests.sh "$out/nccl_tests.log" >>"$out/env.log" 2>&1 &
peer=$!

gpu_tests() { # ctest's gpu label; the same tests by hand where the machine has no ctest
    if command -v ctest >/dev/null; then
        ctest --test-dir build -L gpu -V
        return
    fi
    local rc=0
    build/tests/test_mlp_cuda || rc=1
    bash tests/gpu_train.sh build/sovtrain || rc=1
    bash tests/comm_check.sh build/sovtrain build/tests/comm_check 1 nccl || rc=1
    return $rc
}
step "GPU tests" "$out/gpu_tests.log" gpu_tests
step "allreduce_perf (nccl, 1 GPU)" "$out/allreduce.log" \
    build/sovtrain launch -np 1 -- build/bench/allreduce_perf --only nccl,nccl-oop --time 0.1
step "bench/train (MLP, 1 GPU, vs PyTorch on the same GPU)" "$out/train_bench.log" \
    python3 bench/train.py --sovtrain build/sovtrain --model mlp --device cuda --ranks 1 --steps 300
# bf16 products beside f32, the same job and GPU, in the same run.
step "bench/train (MLP, 1 GPU, --precision bf16)" /tmp/sovtrain-train-bf16.log \
    python3 bench/train.py --sovtrain build/sovtrain --model mlp --device cuda --ranks 1 --steps 300 --no-torch \
    --sovtrain-args "--precision bf16"
cat /tmp/sovtrain-train-bf16.log >>"$out/train_bench.log"
for precision in f32 bf16; do # a batch large enough for the products to dominate the step
    python3 bench/train.py --sovtrain build/sovtrain --model mlp --device cuda --ranks 1 --steps 200 --no-torch \
        --batch-per-rank 8192 --sovtrain-args "--precision $precision" >>"$out/train_bench.log" 2>&1
done
grep -h "^  sovtrain\|^  torch" "$out/train_bench.log" >>"$summary"
# Checkpoint stall on the GPU: 4096-wide MLP, 36.8M parameters, params + AdamW moments = 442 MB snapshotted
# through pinned memory every 10 steps.
step "checkpoint stall (GPU job, 442 MB of state)" "$out/ckpt_stall.log" \
    build/sovtrain train --device cuda --hidden 4096,4096,4096 --steps 40 --ckpt-every 10 --log-every 10 \
    --eval-every 0 --run-dir /tmp/sovtrain-stall-run
python3 - /tmp/sovtrain-stall-run/metrics.jsonl >>"$summary" 2>&1 <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
start = next(e for e in ev if e["event"] == "start")
stalls = [e["stall_ms"] for e in ev if e["event"] == "checkpoint"]
state = 3 * 4 * start["num_params"]
print(f"   checkpoint stalls {['%.1f' % s for s in stalls]} ms for {state / 1e6:.0f} MB of state: "
      f"{state / (min(stalls) * 1e-3) / 1e9:.1f} GB/s device-to-host at best")
PY
# The README's main job (examples/demo.args) on the GPU, one rank: its accuracy target is >= 0.88.
step "the main job on the GPU (examples/demo.args, 1 rank)" /tmp/sovtrain-demo-gpu.log \
    build/sovtrain train $(cat examples/demo.args) --device cuda --run-dir /tmp/sovtrain-demo-gpu
grep -h "^done" /tmp/sovtrain-demo-gpu.log >>"$summary"
# The bound of that stall: one device-to-host copy of the same bytes into pinned memory, timed by PyTorch.
python3 - >>"$summary" 2>&1 <<'PY'
import time, torch
n = 3 * 36_818_954  # params + 2 AdamW moments of the job above, f32
src = torch.ones(n, device="cuda")
dst = torch.empty(n, pin_memory=True)
best = 1e9
for _ in range(5):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    dst.copy_(src); torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t0)
print(f"   bound: one pinned device-to-host copy of {4 * n / 1e6:.0f} MB (torch): {best * 1e3:.1f} ms, "
      f"{4 * n / best / 1e9:.1f} GB/s")
PY
wait $peer
echo "== nccl-tests build+run: exit $?" >>"$summary"
cat "$summary"
