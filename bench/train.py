#!/usr/bin/env python3
"""bench/train: training throughput of sovtrain at 1 and N ranks on the same model and per-rank batch
(weak scaling), and the scaling efficiency = samples/s(N) / (N x samples/s(1)); the bound is 1.0.

Prints a table and JSON lines {"bench":"train","ranks","samples_per_s","efficiency",...}.
Throughput is the job's own figure: global samples over the time spent in training steps (forward, backward,
gradient allreduce, optimizer), excluding start-up, the first warm-up steps and evaluation."""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def run(sovtrain, ranks, args, run_dir):
    cmd = [sovtrain, "launch", "-np", str(ranks), "--", "sovtrain", "train",
           "--model", "mlp", "--hidden", args.hidden, "--batch", str(args.batch_per_rank * ranks),
           "--steps", str(args.steps), "--threads", "1", "--log-every", str(args.steps),
           "--eval-every", str(10 * args.steps), "--run-dir", run_dir]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench/train: {' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    events = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    done = [e for e in events if e["event"] == "done"][-1]
    return done["samples_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sovtrain", default="build/sovtrain", help="the sovtrain binary (default build/sovtrain)")
    p.add_argument("--hidden", default="1024,1024", help="MLP hidden widths (default 1024,1024)")
    p.add_argument("--batch-per-rank", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ranks", default="1,2", help="comma-separated world sizes; the first is the baseline")
    args = p.parse_args()
    sovtrain = os.path.abspath(args.sovtrain)
    ranks = [int(r) for r in args.ranks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sovtrain-bench-") as tmp:
        for n in ranks:
            rows.append((n, run(sovtrain, n, args, os.path.join(tmp, f"r{n}"))))
    base_n, base = rows[0]
    model = f"mlp 784-{args.hidden.replace(',', '-')}-10"
    print(f"# bench/train: {model}, {args.batch_per_rank} samples per rank, {args.steps} steps, 1 BLAS thread per rank")
    print(f"# {'ranks':>5} {'samples/s':>12} {'per rank':>10} {'efficiency':>11}  (bound 1.00)")
    for n, sps in rows:
        eff = sps / (n / base_n * base)
        print(f"  {n:>5} {sps:>12.0f} {sps / n:>10.0f} {eff:>11.3f}")
    for n, sps in rows:
        eff = sps / (n / base_n * base)
        print(json.dumps({"bench": "train", "model": model, "impl": "sovtrain", "ranks": n,
                          "batch_per_rank": args.batch_per_rank, "samples_per_s": round(sps, 1),
                          "efficiency": round(eff, 4)}))


if __name__ == "__main__":
    main()
