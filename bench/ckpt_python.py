#!/usr/bin/env python3
"""bench/ckpt_python: sovtrain's Python API and its DCP storage backend, beside their peers, in one run.

Run with the PyTorch test venv's Python (scripts/setup.sh makes it):
    ~/.local/share/sovtrain/torch-2.15.0/bin/python bench/ckpt_python.py [--build build] [--width 768]

The state is a torch state_dict shaped like GPT-2 124M with its AdamW state (148 parameter tensors; exp_avg,
exp_avg_sq and step for each; param_groups), with values like a model part-way through training (as bench/ckpt_perf's
gpt2-adamw case draws them). Every timed figure is taken in tries that alternate with the others', so that all of
them sample the disk over the same minutes, and keeps its best try:
  - sovtrain.checkpoint.save: the training stall (until save returns) and the save (until the checkpoint is durable
    and latest), against one memcpy of the state and torch.save (+ fsync); load (new tensors) against torch.load,
    and load(into=) in place; its compression ratio against the order-0 entropy bound of the same tensors;
  - torch.distributed.checkpoint through sovtrain.dcp against DCP's own FileSystemWriter/Reader (its defaults:
    one thread, files fsynced), save and load, and its bytes against sovtrain.checkpoint's plus DCP's metadata;
  - the C API on the same tensors (bench/ckpt_perf --from the checkpoint that Python wrote): the Python API's save and
    restore speeds against it, and the entropy bound.
Restores read from the disk: the files are dropped from the page cache first. Prints a table, each target with its
ratio, and JSON lines {"bench":"ckpt_python",...} on stderr."""

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp

import sovtrain.checkpoint as ckpt
import sovtrain.dcp
from sovtrain import _lib, _tensors, _tree

BLOCK = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
         "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
         "mlp.c_proj.bias"]


def gpt2_shapes(w):
    shapes = {"wte.weight": (50257, w), "wpe.weight": (1024, w)}
    per = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.c_attn.weight": (w, 3 * w), "attn.c_attn.bias": (3 * w,),
           "attn.c_proj.weight": (w, w), "attn.c_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
           "mlp.c_fc.weight": (w, 4 * w), "mlp.c_fc.bias": (4 * w,), "mlp.c_proj.weight": (4 * w, w),
           "mlp.c_proj.bias": (w,)}
    for layer in range(12):
        for b in BLOCK:
            shapes[f"h.{layer}.{b}"] = per[b]
    shapes["ln_f.weight"], shapes["ln_f.bias"] = (w,), (w,)
    return shapes


def gpt2_state(width):
    g = torch.Generator().manual_seed(124)
    model, opt = {}, {}
    for i, (name, shape) in enumerate(gpt2_shapes(width).items()):
        gain = 1.0 if "ln_" in name and name.endswith("weight") else 0.0
        model[name] = torch.randn(shape, generator=g) * 0.02 + gain
        m = torch.randn(shape, generator=g) * 1e-4
        v = (torch.randn(shape, generator=g) * 1e-4) ** 2 + 1e-10
        opt[i] = {"step": torch.tensor(1000.0), "exp_avg": m, "exp_avg_sq": v}
    groups = [{"lr": 6e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False,
               "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
               "decoupled_weight_decay": True, "params": list(range(len(model)))}]
    return {"model": model, "optimizer": {"state": opt, "param_groups": groups}}


def tensors(state):
    out = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
    walk(state)
    return out


def zeros_like(state):
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {k: zeros_like(v) for k, v in state.items()}
    if isinstance(state, list):
        return [zeros_like(v) for v in state]
    return state


def files_under(path):
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def size_of(path):
    return sum(os.path.getsize(f) for f in files_under(path))


def drop_cached(path):
    """Restores are measured from the disk: the files leave the page cache first."""
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def torch_save(state, path):
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def c_requests(state):
    """sov_ckpt_read_request for every tensor of `state` (contiguous host tensors of the format's dtypes), under the
    names sovtrain.checkpoint gives them, and the objects that must live while they are used."""
    named = _tree.flatten(state)[1]
    requests = (_lib.ReadRequest * len(named))()
    keep_alive = []
    for i, (name, t) in enumerate(named):
        encoded = name.encode()
        keep_alive.append(encoded)
        requests[i].name, requests[i].dtype = encoded, _tensors.SOV_DTYPES.index(_tensors.dtype_name(t))
        requests[i].dst = t.data_ptr()
    return requests, keep_alive


def c_figures(build, path, tmp, threads):
    """bench/ckpt_perf on the same tensors (the checkpoint Python wrote): the C API's figures and the bound."""
    out = subprocess.run([os.path.join(build, "bench", "ckpt_perf"), "--from", path, "--from-case", "py-gpt2",
                          "--mib", "0", "--gpt2", "0", "--dir", tmp, "--threads", str(threads)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench/ckpt_python: ckpt_perf failed ({out.returncode}): {out.stdout}{out.stderr}")
    return json.loads([line for line in out.stderr.splitlines() if line.startswith("{")][0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", help="the build directory, for bench/ckpt_perf (default build)")
    p.add_argument("--dir", default=None, help="where checkpoints are written (default: a temporary directory "
                                               "under the current one, i.e. on this disk)")
    p.add_argument("--width", type=int, default=768, help="GPT-2's width (default 768: 124M parameters)")
    p.add_argument("--tries", type=int, default=6, help="tries of each figure, alternating; the best is kept")
    p.add_argument("--threads", type=int, default=2, help="sovtrain's compression threads (default 2)")
    a = p.parse_args()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: DCP's no_dist
    build = os.path.abspath(a.build)
    state = gpt2_state(a.width)
    flat = tensors(state)
    raw = sum(t.numel() * t.element_size() for t in flat)
    template = zeros_like(state)
    best = {}

    last = {}

    def keep(name, seconds):
        best[name] = min(best.get(name, float("inf")), seconds)
        last[name] = seconds

    with tempfile.TemporaryDirectory(prefix="sovtrain-ckpt-python-", dir=a.dir or os.getcwd()) as tmp:
        sov_dir, dcp_dir = os.path.join(tmp, "sov"), os.path.join(tmp, "dcp-sov")
        pt, fs_dir = os.path.join(tmp, "state.pt"), os.path.join(tmp, "dcp-fs")
        copies = [torch.empty_like(t) for t in flat]
        keep_all = a.tries + 1  # nothing pruned: a save's time ends when it is durable, as the peers' do
        paths = {}

        def sov_save(t):
            t0 = time.perf_counter()
            handle = ckpt.save(state, sov_dir, t + 1, keep=keep_all, threads=a.threads)
            keep("stall", time.perf_counter() - t0)
            paths["sov"] = handle.wait()
            keep("sov_save", time.perf_counter() - t0)
            keep("c_stall", handle.stall_s)  # the C API's own figures for this save: from its call to its return,
            keep("c_save", handle.save_s)    # and to the checkpoint durable and latest
            pairs["save"].append(handle.save_s / (time.perf_counter() - t0))

        def torch_save_try(t):
            if os.path.exists(pt):
                os.unlink(pt)
            keep("torch_save", timed(lambda: torch_save(state, pt))[0])

        def dcp_fs_save(t):
            shutil.rmtree(fs_dir, ignore_errors=True)
            keep("dcp_fs_save", timed(lambda: dcp.save(state, storage_writer=dcp.FileSystemWriter(fs_dir)))[0])

        def dcp_sov_save(t):
            writer = sovtrain.dcp.StorageWriter(dcp_dir, step=t + 1, keep=keep_all, threads=a.threads)
            keep("dcp_sov_save", timed(lambda: dcp.save(state, storage_writer=writer))[0])
            paths["dcp"] = os.path.join(dcp_dir, f"step-{t + 1}")

        def restore(name, path, fn, check=None):
            drop_cached(path)
            seconds, out = timed(fn)
            keep(name, seconds)
            if check is not None and not all(torch.equal(x, y) for x, y in zip(tensors(check(out)), flat)):
                sys.exit(f"bench/ckpt_python: {name} did not give back the state")

        restores = [
            lambda: restore("sov_load", paths["sov"], lambda: ckpt.load(paths["sov"]), lambda out: out),
            lambda: python_and_c_into(),
            lambda: restore("torch_load", pt, lambda: torch.load(pt, weights_only=True)),
            lambda: restore("dcp_fs_load", fs_dir, lambda: dcp.load(
                template, storage_reader=dcp.FileSystemReader(fs_dir))),
            lambda: restore("dcp_sov_load", paths["dcp"], lambda: dcp.load(
                template, storage_reader=sovtrain.dcp.StorageReader(paths["dcp"])), lambda out: template),
        ]
        def c_restore():
            """The C API alone: sov_ckpt_open, one sov_ckpt_read_many into the template's tensors, close."""
            requests, keep_alive = c_requests(template)
            drop_cached(paths["sov"])
            t0 = time.perf_counter()
            ptr = ctypes.c_void_p()
            _lib.check(_lib.lib.sov_ckpt_open(paths["sov"].encode(), ctypes.byref(ptr)), "open")
            _lib.check(_lib.lib.sov_ckpt_read_many(ptr, requests, len(requests)), "read")
            _lib.lib.sov_ckpt_close(ptr)
            keep("c_restore", time.perf_counter() - t0)

        turn = [0]
        pairs = {"save": [], "into": []}  # C time / Python time of each try (in the JSON line: how much they vary)

        def python_and_c_into():
            """The Python API's load(into) and the C API's restore of the same tensors, one right after the other
            (in turn first), so that both meet the same disk and memory."""
            python = lambda: restore("sov_load_into", paths["sov"], lambda: ckpt.load(paths["sov"], into=template),
                                     lambda out: template)
            turn[0] += 1
            for fn in [python, c_restore] if turn[0] % 2 else [c_restore, python]:
                fn()
            pairs["into"].append(last["c_restore"] / last["sov_load_into"])
        saves = [sov_save, torch_save_try, dcp_fs_save, dcp_sov_save]
        for t in range(a.tries):  # each try in another order: none is always the first after the others' writes
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one memcpy: one thread, as the snapshot copies
            keep("memcpy", timed(lambda: [d.copy_(s) for d, s in zip(copies, flat)])[0])
            torch.set_num_threads(threads)
            for fn in saves[t % len(saves):] + saves[:t % len(saves)]:
                fn(t)
            for fn in restores[t % len(restores):] + restores[:t % len(restores)]:
                fn()
        sov_path, dcp_path = paths["sov"], paths["dcp"]

        sizes = {"sov": size_of(sov_path), "dcp_sov": size_of(dcp_path), "dcp_fs": size_of(fs_dir), "torch": size_of(pt),
                 "sov_manifest": size_of(os.path.join(sov_path, "manifest.json")),
                 "dcp_sov_manifest": size_of(os.path.join(dcp_path, "manifest.json")),
                 "dcp_fs_metadata": size_of(os.path.join(fs_dir, ".metadata"))}
        with ckpt.Checkpoint(dcp_path) as c:
            dcp_meta = len(json.dumps(c.meta["dcp"], separators=(",", ":")))
        cfig = c_figures(build, sov_path, tmp, a.threads)

    gbs = {k: raw / v / 1e9 for k, v in best.items()}
    ratio = raw / sizes["sov"]
    rows = [
        ("stall / memcpy", best["stall"] / best["memcpy"], "<=", 1.5),
        ("save / torch.save", gbs["sov_save"] / gbs["torch_save"], ">=", 2.0),
        ("load / torch.load", gbs["sov_load"] / gbs["torch_load"], ">=", 1.0),
        ("ratio / entropy bound", ratio / cfig["entropy_bound"], ">=", 0.97),
        ("dcp save / FileSystemWriter", gbs["dcp_sov_save"] / gbs["dcp_fs_save"], ">=", 1.3),
        ("dcp load / FileSystemReader", gbs["dcp_sov_load"] / gbs["dcp_fs_load"], ">=", 1.0),
        ("dcp bytes / (ours + DCP's metadata)", sizes["dcp_sov"] / (sizes["sov"] + sizes["dcp_fs_metadata"]), "<=",
         1.0),
        ("python save / C save", gbs["sov_save"] / gbs["c_save"], ">=", 0.9),
        ("python load(into) / C restore", gbs["sov_load_into"] / gbs["c_restore"], ">=", 0.9),
    ]
    print(f"# ckpt_python: a GPT-2 (width {a.width}) state_dict with AdamW state, {raw / 1e6:.1f} MB in "
          f"{len(flat)} tensors; {a.threads} compression threads; best of {a.tries} alternating tries")
    print(f"# GB/s of raw state: save {gbs['sov_save']:.3f} (C API {gbs['c_save']:.3f}; ckpt_perf {cfig['save_gbs']:.3f}),"
          f" torch.save "
          f"{gbs['torch_save']:.3f}, dcp+sovtrain {gbs['dcp_sov_save']:.3f}, dcp FileSystemWriter "
          f"{gbs['dcp_fs_save']:.3f}")
    print(f"#            load {gbs['sov_load']:.3f}, load(into) {gbs['sov_load_into']:.3f} (C API {gbs['c_restore']:.3f}; "
          f"ckpt_perf {cfig['restore_gbs']:.3f}),"
          f" torch.load {gbs['torch_load']:.3f}, dcp+sovtrain {gbs['dcp_sov_load']:.3f}, dcp FileSystemReader "
          f"{gbs['dcp_fs_load']:.3f}")
    print(f"# stall {best['stall'] * 1e3:.1f} ms (C API {best['c_stall'] * 1e3:.1f}), memcpy {best['memcpy'] * 1e3:.1f} ms"
          f" (ckpt_perf's {cfig['memcpy_ms']:.1f}); ratio {ratio:.3f}, bound {cfig['entropy_bound']:.3f}")
    print(f"# MB on disk: ours {sizes['sov'] / 1e6:.3f} (manifest {sizes['sov_manifest'] / 1e3:.1f} kB), dcp+sovtrain "
          f"{sizes['dcp_sov'] / 1e6:.3f} (manifest {sizes['dcp_sov_manifest'] / 1e3:.1f} kB, DCP's metadata in it "
          f"{dcp_meta / 1e3:.1f} kB), DCP's own {sizes['dcp_fs'] / 1e6:.3f} (.metadata {sizes['dcp_fs_metadata'] / 1e3:.1f}"
          f" kB), torch.save {sizes['torch'] / 1e6:.3f}")
    ceiling = cfig["disk_gbs"] * cfig["entropy_bound"] / gbs["torch_save"]
    print(f"# the disk writes {cfig['disk_gbs']:.3f} GB/s (ckpt_perf, fsync'd): a save reaching the entropy bound at "
          f"that speed would be {ceiling:.2f}x torch.save here (the save's ceiling)")
    print(f"# {'figure':<40} {'ratio':>7}  target")
    for name, value, op, target in rows:
        ok = value <= target if op == "<=" else value >= target
        print(f"  {name:<40} {value:>7.3f}  {op} {target:<4} {'met' if ok else 'MISSED'}")
    print(json.dumps({"bench": "ckpt_python", "bytes": raw, "width": a.width, "gbs": gbs, "seconds": best,
                      "sizes": sizes, "dcp_meta_bytes": dcp_meta, "save_ceiling": ceiling, "ratio": ratio, "c": cfig,
                      "pairs": pairs, "ratios": {name: value for name, value, _, _ in rows}}), file=sys.stderr)


if __name__ == "__main__":
    main()
