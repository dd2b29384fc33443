#!/usr/bin/env python3
"""bench/train: training throughput of sovtrain at 1 and N ranks on the same model and per-rank batch
(weak scaling), the scaling efficiency = throughput(N) / (N x throughput(1)) against its bound of 1.0, and, in the
same run, PyTorch (DDP over gloo) on the same model, batch and ranks where Debian's python3-torch is installed.

--model mlp: the MLP 784-H1-H2-10 on Fashion-MNIST (bench/peers/torch_mlp.py), in samples/s.
--model gpt: the GPT of `sovtrain train --model gpt` (L4 C128 H4 T128 by default, byte tokens, the fortunes corpus;
  bench/peers/torch_gpt.py), in tokens/s, plus the validation loss after the same training time: sovtrain's
  largest-world run's train_s is given to the PyTorch peer as --seconds at the same world size (its LR schedule
  still spans --gpt-steps), and the two final val_loss values (nats per byte) are compared. Checks the targets:
  scaling efficiency >= 0.90, sovtrain/PyTorch tokens/s >= 0.8 at 1 rank and >= 1.3 at 2 ranks, and sovtrain's
  val_loss <= PyTorch's after the same time.
--model all (default): both.
--device cuda: the MLP on GPUs, one per rank (`sovtrain train --device cuda`; the PyTorch peer on cuda:LOCAL_RANK
  with DDP over NCCL and the training set resident on the GPU); world sizes above the number of GPUs PyTorch sees
  are skipped. The GPT benchmark is CPU-only (sovtrain's GPT has no CUDA implementation).
--python: the interpreter of the PyTorch peers (default: this one where it can import torch, else Debian's
  /usr/bin/python3, where python3-torch installs).

Prints tables and JSON lines {"bench":"train","impl","ranks","device",...} ("model":"gpt" ones carry tokens_per_s,
efficiency and val_loss). Throughput is each job's own figure: global samples (tokens) over the time spent in
training steps (forward, backward, gradient allreduce, optimizer) after the first 5 warm-up steps, excluding
start-up and evaluation."""
import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEBIAN_PYTHON = "/usr/bin/python3"  # Debian's interpreter, where python3-torch installs


def run(cmd, timeout):
    """(returncode, stdout, stderr) of cmd; past `timeout` seconds its whole process group is killed (a peer's
    spawned ranks included) and the benchmark stops."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        sys.exit(f"bench/train: {' '.join(cmd)} still running after {timeout} s; killed:\n{out}{err}")
    return proc.returncode, out, err


def same_blas_kernels(sovtrain):
    """Where OpenBLAS does not know this CPU, `sovtrain train` restarts itself with OPENBLAS_CORETYPE naming faster
    kernels (runtime/blas_kernels.h); PyTorch's products go through the same OpenBLAS, so the peers get the same
    variable, set here for every process the bench starts. A value already set is kept, for both."""
    if "OPENBLAS_CORETYPE" in os.environ:
        print(f"# OpenBLAS kernels: {os.environ['OPENBLAS_CORETYPE']} (OPENBLAS_CORETYPE), sovtrain and PyTorch alike")
        return
    rc, out, _ = run([sovtrain, "version"], 60)
    switch = re.search(r"switch to (\w+)", out) if rc == 0 else None
    if switch:
        os.environ["OPENBLAS_CORETYPE"] = switch.group(1)
        print(f"# OpenBLAS kernels: {switch.group(1)}, sovtrain and PyTorch alike (OpenBLAS does not know this CPU; "
              "see runtime/blas_kernels.h)")


def sovtrain_done(sovtrain, ranks, train_args, run_dir, args):
    """The "done" event of `sovtrain launch -np ranks -- sovtrain train train_args --device D --run-dir run_dir`."""
    cmd = [sovtrain, "launch", "-np", str(ranks), "--", "sovtrain", "train"] + train_args + [
        "--device", args.device, "--run-dir", run_dir]
    rc, out, err = run(cmd, args.timeout)
    if rc != 0:
        sys.exit(f"bench/train: {' '.join(cmd)} failed ({rc}):\n{out}{err}")
    events = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [e for e in events if e["event"] == "done"][-1]


def run_sovtrain(sovtrain, ranks, args, run_dir, extra):
    train_args = ["--model", "mlp", "--hidden", args.hidden, "--batch", str(args.batch_per_rank * ranks),
                  "--steps", str(args.steps), "--threads", "1", "--log-every", str(args.steps),
                  "--eval-every", str(10 * args.steps)] + extra
    return sovtrain_done(sovtrain, ranks, train_args, run_dir, args)["samples_per_s"]


def run_torch(ranks, args):
    """samples/s of the PyTorch DDP peer, or None (with the reason) where torch is missing."""
    result, note = run_peer(args, "torch_mlp.py", [
        "--ranks", str(ranks), "--hidden", args.hidden, "--batch-per-rank", str(args.batch_per_rank),
        "--steps", str(args.steps), "--device", args.device])
    return (result["samples_per_s"] if result else None), note


def run_peer(args, script, peer_args):
    """The JSON line bench/peers/<script> prints under args.python, or None (with the reason) where torch is
    missing."""
    if not shutil.which(args.python):
        return None, f"{args.python} missing"
    cmd = [args.python, os.path.join(HERE, "peers", script)] + peer_args
    rc, out, err = run(cmd, args.timeout)
    if rc == 77:
        return None, f"{args.python} cannot import torch (apt-get install python3-torch, or see --python)"
    if rc != 0:
        sys.exit(f"bench/train: {' '.join(cmd)} failed ({rc}):\n{out}{err}")
    return json.loads(out.strip().splitlines()[-1]), None


# ---- GPT ----

def gpt_train_args(args, ranks):
    """`sovtrain train` arguments of the GPT job at `ranks` ranks (the same per-rank batch at every size)."""
    return ["--model", "gpt", "--data", args.gpt_data, "--layers", str(args.gpt_layers),
            "--heads", str(args.gpt_heads), "--width", str(args.gpt_width), "--context", str(args.gpt_context),
            "--batch", str(args.gpt_batch_per_rank * ranks), "--steps", str(args.gpt_steps), "--threads", "1",
            "--lr", repr(args.gpt_lr), "--warmup-steps", str(args.gpt_warmup_steps),
            "--eval-every", str(10 * args.gpt_steps), "--log-every", str(args.gpt_steps), "--seed", str(args.seed)]


def run_torch_gpt(ranks, args, seconds=None):
    """The GPT peer's JSON result at `ranks` ranks (--steps mode, or --seconds), or None with the reason."""
    peer_args = ["--ranks", str(ranks), "--layers", str(args.gpt_layers), "--heads", str(args.gpt_heads),
                 "--width", str(args.gpt_width), "--context", str(args.gpt_context),
                 "--batch-per-rank", str(args.gpt_batch_per_rank), "--steps", str(args.gpt_steps),
                 "--lr", repr(args.gpt_lr), "--warmup-steps", str(args.gpt_warmup_steps),
                 "--data", args.gpt_data, "--seed", str(args.seed)]
    if seconds is not None:
        peer_args += ["--seconds", f"{seconds:.3f}"]
    return run_peer(args, "torch_gpt.py", peer_args)


def gpt_params(L, C, T, V=256):
    """Parameter count of runtime/gpt.c's model."""
    return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


def bench_gpt(args, sovtrain, ranks, tmp):
    # rows: (impl, ranks, tokens/s, val_loss, steps)
    rows, note, same_time = [], None, None
    sov = {}
    for n in ranks:
        done = sovtrain_done(sovtrain, n, gpt_train_args(args, n) + args.sovtrain_args.split(),
                             os.path.join(tmp, f"gpt-r{n}"), args)
        sov[n] = done
        rows.append(("sovtrain", n, done["tokens_per_s"], done.get("val_loss"), done.get("step", args.gpt_steps)))
    if not args.no_torch:
        for n in ranks:
            r, note = run_torch_gpt(n, args)
            if r is None:
                break
            rows.append(("torch", n, r["tokens_per_s"], r["val_loss"], r["steps"]))
        if note is None:
            top = ranks[-1]
            seconds = sov[top]["train_s"]
            r, note = run_torch_gpt(top, args, seconds)
            if r is not None:
                same_time = {"ranks": top, "seconds": seconds, "sovtrain_val_loss": sov[top].get("val_loss"),
                             "sovtrain_steps": sov[top].get("step", args.gpt_steps), "torch_val_loss": r["val_loss"],
                             "torch_steps": r["steps"], "torch_train_s": r["train_s"]}
    base = {impl: tps / n for impl, n, tps, _, _ in rows if n == ranks[0]}
    ours = {n: tps for impl, n, tps, _, _ in rows if impl == "sovtrain"}
    theirs = {n: tps for impl, n, tps, _, _ in rows if impl == "torch"}

    def eff(impl, n, tps):
        return tps / (n * base[impl])

    L, C, H, T = args.gpt_layers, args.gpt_width, args.gpt_heads, args.gpt_context
    model = f"gpt L{L} C{C} H{H} T{T}"
    print(f"# bench/train: {model} ({gpt_params(L, C, T) / 1e6:.2f}M parameters, byte tokens, "
          f"{os.path.basename(args.gpt_data.rstrip('/'))}), {args.gpt_batch_per_rank} x {T} tokens per rank, "
          f"{args.gpt_steps} steps (lr {args.gpt_lr:g}, warmup {args.gpt_warmup_steps}), 1 thread per rank")
    print(f"# efficiency = tokens/s(N) / (N x tokens/s(1 rank)) of the same implementation (bound 1.00); "
          f"val_loss in nats/byte after the {args.gpt_steps} steps")
    print(f"# {'impl':<9} {'ranks':>5} {'tokens/s':>10} {'efficiency':>11} {'sovtrain/this':>14} {'val_loss':>9}")
    for impl, n, tps, vl, _ in rows:
        vls = f"{vl:.4f}" if vl is not None else "-"
        print(f"  {impl:<9} {n:>5} {tps:>10.0f} {eff(impl, n, tps):>11.3f} {ours[n] / tps:>14.2f} {vls:>9}")
    if same_time:
        st = same_time
        print(f"# same training time, {st['ranks']} ranks, {st['seconds']:.1f} s (sovtrain's train_s): sovtrain "
              f"val_loss {st['sovtrain_val_loss']:.4f} after {st['sovtrain_steps']} steps, torch "
              f"{st['torch_val_loss']:.4f} after {st['torch_steps']} steps ({st['torch_train_s']:.1f} s)")
    if note:
        print(f"# PyTorch peer skipped: {note}")
    # targets
    targets = []
    if len(ranks) > 1:
        n = ranks[-1]
        targets.append((f"sovtrain scaling efficiency at {n} ranks", eff("sovtrain", n, ours[n]), ">=", 0.90))
    for n, bound in ((1, 0.8), (2, 1.3)):
        if n in ours and n in theirs:
            targets.append((f"sovtrain / torch tokens/s at {n} rank{'s' if n > 1 else ''}", ours[n] / theirs[n],
                            ">=", bound))
    if same_time and same_time["sovtrain_val_loss"] is not None:
        targets.append(("sovtrain val_loss - torch val_loss, same time", same_time["sovtrain_val_loss"]
                        - same_time["torch_val_loss"], "<=", 0.0))
    for name, value, op, bound in targets:
        ok = value >= bound if op == ">=" else value <= bound
        print(f"# target: {name:<46} {value:>8.3f} {op} {bound:<5g} {'PASS' if ok else 'FAIL'}")
    for impl, n, tps, vl, steps in rows:
        print(json.dumps({"bench": "train", "model": "gpt", "impl": impl, "ranks": n, "device": "cpu",
                          "tokens_per_s": round(tps, 1), "efficiency": round(eff(impl, n, tps), 4),
                          "val_loss": round(vl, 5) if vl is not None else None, "steps": steps,
                          "batch_per_rank": args.gpt_batch_per_rank, "context": T}))
    if same_time:
        print(json.dumps({"bench": "train", "model": "gpt", "compare": "val_loss_same_time",
                          **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in same_time.items()}}))
    print(json.dumps({"bench": "train", "model": "gpt", "targets": [
        {"name": name, "value": round(value, 4), "op": op, "bound": bound,
         "pass": bool(value >= bound if op == ">=" else value <= bound)} for name, value, op, bound in targets]}))


def bench_mlp(args, sovtrain, ranks, tmp):
    rows, note = [], None
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
    per_rank = "1 thread per rank" if args.device == "cpu" else "1 GPU per rank"
    print(f"# bench/train: {model}, {args.batch_per_rank} samples per rank, {args.steps} steps, {per_rank}")
    print(f"# efficiency = samples/s(N) / (N x samples/s(1 rank)) of the same implementation (bound 1.00)")
    print(f"# {'impl':<9} {'ranks':>5} {'device':>6} {'samples/s':>11} {'efficiency':>11} {'sovtrain/this':>14}")
    for impl, n, sps in rows:
        print(f"  {impl:<9} {n:>5} {args.device:>6} {sps:>11.0f} {sps / (n * base[impl]):>11.3f} "
              f"{ours[n] / sps:>14.2f}")
    if note:
        print(f"# PyTorch peer skipped: {note}")
    for impl, n, sps in rows:
        print(json.dumps({"bench": "train", "model": model, "impl": impl, "ranks": n, "device": args.device,
                          "batch_per_rank": args.batch_per_rank, "samples_per_s": round(sps, 1),
                          "efficiency": round(sps / (n * base[impl]), 4)}))


def cuda_ranks(args, ranks):
    """The world sizes of `ranks` that have a GPU per rank, as PyTorch under args.python counts them (it exits
    where there is no GPU, or no torch to count them with)."""
    count = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    if not shutil.which(args.python):
        sys.exit(f"bench/train: {args.python} missing (see --python)")
    rc, out, err = run([args.python, "-c", count], 300)
    if rc != 0:
        sys.exit(f"bench/train: --device cuda counts the GPUs with PyTorch, which {args.python} cannot import "
                 f"({(err.strip().splitlines() or ['?'])[-1]}); see --python")
    gpus = int(out.split()[-1])
    if gpus == 0:
        sys.exit(f"bench/train: --device cuda, but no CUDA GPU is usable here (torch.cuda.is_available() is False "
                 f"under {args.python})")
    skipped = [n for n in ranks if n > gpus]
    if skipped:
        print(f"# bench/train: skipping {','.join(map(str, skipped))} ranks: one GPU per rank, {gpus} visible")
    return [n for n in ranks if n <= gpus]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sovtrain", default="build/sovtrain", help="the sovtrain binary (default build/sovtrain)")
    p.add_argument("--model", choices=("mlp", "gpt", "all"), default="all", help="which benchmark (default all)")
    p.add_argument("--ranks", default="1,2", help="comma-separated world sizes; the first is the baseline")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the MLP trains, sovtrain "
                   "and PyTorch alike (default cpu); cuda: one GPU per rank, MLP only")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    p.add_argument("--python", default=sys.executable if importlib.util.find_spec("torch") else DEBIAN_PYTHON,
                   help="interpreter of the PyTorch peers (default: this one where it can import torch, else "
                   f"{DEBIAN_PYTHON})")
    p.add_argument("--sovtrain-args", default="", help="extra `sovtrain train` arguments, e.g. '--comm mpi'")
    p.add_argument("--seed", type=int, default=1, help="GPT: seed of both implementations (default 1)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one job may take (default 1800)")
    g = p.add_argument_group("mlp")
    g.add_argument("--hidden", default="1024,1024", help="MLP hidden widths (default 1024,1024)")
    g.add_argument("--batch-per-rank", type=int, default=128)
    g.add_argument("--steps", type=int, default=300)
    g = p.add_argument_group("gpt")
    g.add_argument("--gpt-steps", type=int, default=400, help="steps of every GPT run, and the LR schedule's "
                   "length in the same-time run (default 400: at 150 the same-time val_loss comparison is within seed noise)")
    g.add_argument("--gpt-batch-per-rank", type=int, default=16, help="sequences per rank per step (default 16)")
    g.add_argument("--gpt-layers", type=int, default=4)
    g.add_argument("--gpt-heads", type=int, default=4)
    g.add_argument("--gpt-width", type=int, default=128)
    g.add_argument("--gpt-context", type=int, default=128)
    g.add_argument("--gpt-lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    g.add_argument("--gpt-warmup-steps", type=int, default=40, help="LR warmup steps (default 40: with 15, a "
                   "loss spike after the warmup leaves some seeds on the ~3.3 nats/byte plateau at 150 steps)")
    g.add_argument("--gpt-data", default="/usr/share/games/fortunes", help="text corpus, a file or directory "
                   "(default /usr/share/games/fortunes)")
    args = p.parse_args()
    sovtrain = os.path.abspath(args.sovtrain)
    same_blas_kernels(sovtrain)
    ranks = [int(r) for r in args.ranks.split(",")]
    if args.device == "cuda":
        if args.model == "gpt":
            p.error("--device cuda: the GPT benchmark is CPU-only (sovtrain's GPT has no CUDA implementation)")
        ranks = cuda_ranks(args, ranks)
        if args.model == "all":
            print("# bench/train: --device cuda runs the MLP only (sovtrain's GPT has no CUDA implementation)")
        if not ranks:
            sys.exit("bench/train: no world size left to run (--ranks)")
    with tempfile.TemporaryDirectory(prefix="sovtrain-bench-") as tmp:
        if args.model in ("mlp", "all"):
            bench_mlp(args, sovtrain, ranks, tmp)
        if args.model in ("gpt", "all") and args.device == "cpu":
            bench_gpt(args, sovtrain, ranks, tmp)


if __name__ == "__main__":
    main()
