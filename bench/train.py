#!/usr/bin/env python3
"""bench/train: training throughput of sovtrain at 1 and N ranks on the same model and per-rank batch
(weak scaling), the scaling efficiency = samples/s(N) / (N x samples/s(1)) against its bound of 1.0, and, in the
same run, PyTorch DDP (gloo, bench/peers/torch_mlp.py) on the same model, batch and ranks where Debian's
python3-torch is installed.

Prints a table and JSON lines {"bench":"train","impl","ranks","samples_per_s","efficiency",...}.
Throughput is each job's own figure: global samples over the time spent in training steps (forward, backward,
gradient allreduce, optimizer) after the first 5 warm-up steps, excluding start-up and evaluation."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_PYTHON = "/usr/bin/python3"  # Debian's interpreter, where python3-torch installs


def run_sovtrain(sovtrain, ranks, args, run_dir, extra):
    cmd = [sovtrain, "launch", "-np", str(ranks), "--", "sovtrain", "train",
           "--model", "mlp", "--hidden", args.hidden, "--batch", str(args.batch_per_rank * ranks),
           "--steps", str(args.steps), "--threads", "1", "--log-every", str(args.steps),
           "--eval-every", str(10 * args.steps), "--run-dir", run_dir] + extra
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench/train: {' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    events = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    done = [e for e in events if e["event"] == "done"][-1]
    return done["samples_per_s"]


def run_torch(ranks, args):
    """samples/s of the PyTorch DDP peer, or None (with the reason) where torch is missing."""
    if not os.path.exists(TORCH_PYTHON):
        return None, f"{TORCH_PYTHON} missing"
    cmd = [TORCH_PYTHON, os.path.join(HERE, "peers", "torch_mlp.py"), "--ranks", str(ranks), "--hidden", args.hidden,
           "--batch-per-rank", str(args.batch_per_rank), "--steps", str(args.steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode == 77:
        return None, "python3-torch is not installed (apt-get install python3-torch)"
    if out.returncode != 0:
        sys.exit(f"bench/train: {' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"], None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sovtrain", default="build/sovtrain", help="the sovtrain binary (default build/sovtrain)")
    p.add_argument("--hidden", default="1024,1024", help="MLP hidden widths (default 1024,1024)")
    p.add_argument("--batch-per-rank", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ranks", default="1,2", help="comma-separated world sizes; the first is the baseline")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch DDP peer")
    p.add_argument("--sovtrain-args", default="", help="extra `sovtrain train` arguments, e.g. '--comm mpi'")
    args = p.parse_args()
    sovtrain = os.path.abspath(args.sovtrain)
    ranks = [int(r) for r in args.ranks.split(",")]
    rows, note = [], None
    with tempfile.TemporaryDirectory(prefix="sovtrain-bench-") as tmp:
        for n in ranks:
            rows.append(("sovtrain", n, run_sovtrain(sovtrain, n, args, os.path.join(tmp, f"r{n}"),
                                                     args.sovtrain_args.split())))
        if not args.no_torch:
            for n in ranks:
                sps, note = run_torch(n, args)
                if sps is None:
                    break
                rows.append(("torch", n, sps))
    base = {impl: sps / n for impl, n, sps in rows if n == ranks[0]}
    ours = {n: sps for impl, n, sps in rows if impl == "sovtrain"}
    model = f"mlp 784-{args.hidden.replace(',', '-')}-10"
    print(f"# bench/train: {model}, {args.batch_per_rank} samples per rank, {args.steps} steps, 1 thread per rank")
    print(f"# efficiency = samples/s(N) / (N x samples/s(1 rank)) of the same implementation (bound 1.00)")
    print(f"# {'impl':<9} {'ranks':>5} {'samples/s':>11} {'efficiency':>11} {'sovtrain/this':>14}")
    for impl, n, sps in rows:
        print(f"  {impl:<9} {n:>5} {sps:>11.0f} {sps / (n * base[impl]):>11.3f} {ours[n] / sps:>14.2f}")
    if note:
        print(f"# PyTorch peer skipped: {note}")
    for impl, n, sps in rows:
        print(json.dumps({"bench": "train", "model": model, "impl": impl, "ranks": n,
                          "batch_per_rank": args.batch_per_rank, "samples_per_s": round(sps, 1),
                          "efficiency": round(sps / (n * base[impl]), 4)}))


if __name__ == "__main__":
    main()
