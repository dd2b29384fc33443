"""The C GPT (runtime/gpt.c) against an independent PyTorch implementation of the same architecture.

Usage: gpt_torch_check.py PATH_TO_GPT_DUMP

Runs gpt_dump (one train_step on a fixed model and batch), loads its parameters into the PyTorch model of
bench/peers/torch_gpt.py (the benchmark's peer, written from the architecture's definition, not from the C code),
computes the loss and gradients in float64, and compares:
  |loss_c - loss_torch| < 1e-5, and per tensor max|g_c - g_t| <= 1e-7 + 2e-5 * max|g_t|.
(The C side computes in float32: measured worst errors are 2e-7 in the loss and 8e-7 * max|g_t| in the
gradients, so these bounds leave a margin of 25x or more, while a wrong term in any gradient is off by far more.)
Exits 77 (skipped) when PyTorch or NumPy cannot be imported."""
import json
import os
import struct
import subprocess
import sys
import tempfile

LOSS_TOL = 1e-5
GRAD_ABS, GRAD_REL = 1e-7, 2e-5

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    # Debian's python3-torch lives under /usr/bin/python3, which may not be the python3 first on PATH.
    system = "/usr/bin/python3"
    if (not os.environ.get("GPT_TORCH_CHECK_REEXEC") and os.path.exists(system)
            and os.path.realpath(sys.executable) != os.path.realpath(system)):
        os.environ["GPT_TORCH_CHECK_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)
    print(f"gpt_torch_check: skipped: {e} (install python3-torch python3-numpy)")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "peers"))
from torch_gpt import GPT  # noqa: E402  (after the import check above)


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float64))
    return out


def main():
    if len(sys.argv) != 2:
        print("usage: gpt_torch_check.py PATH_TO_GPT_DUMP", file=sys.stderr)
        return 2
    torch.set_default_dtype(torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.argv[1], tmp], check=True)
        with open(os.path.join(tmp, "config.json")) as f:
            cfg = json.load(f)
        params = load_safetensors(os.path.join(tmp, "params.safetensors"))
        grads_c = load_safetensors(os.path.join(tmp, "grads.safetensors"))
        n, T = cfg["batch"], cfg["context"]

        def ints(name):
            arr = np.fromfile(os.path.join(tmp, name), dtype="<i4").astype(np.int64)
            return torch.from_numpy(arr).view(n, T)

        tokens, targets = ints("tokens.i32"), ints("targets.i32")
        with open(os.path.join(tmp, "loss.txt")) as f:
            loss_c = float(f.read())

    model = GPT(cfg["vocab"], T, cfg["width"], cfg["heads"], cfg["layers"])
    named = model.by_name()
    if set(named) != set(params) or set(params) != set(grads_c):
        print(f"gpt_torch_check: tensor names differ: C {sorted(params)}, torch {sorted(named)}")
        return 1
    with torch.no_grad():
        for name, p in named.items():
            if tuple(p.shape) != tuple(params[name].shape):
                print(f"gpt_torch_check: {name}: C shape {tuple(params[name].shape)}, torch {tuple(p.shape)}")
                return 1
            p.copy_(params[name])
    logits = model(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()

    failed = False
    loss_err = abs(loss_c - loss.item())
    print(f"loss: C {loss_c:.9g}, torch {loss.item():.9g}, |diff| {loss_err:.3g} (tolerance {LOSS_TOL:g})")
    if not loss_err < LOSS_TOL:
        failed = True
    worst_name, worst_ratio, worst_err = None, -1.0, 0.0
    for name, p in named.items():
        g_t, g_c = p.grad, grads_c[name]
        err = (g_c - g_t).abs().max().item()
        bound = GRAD_ABS + GRAD_REL * g_t.abs().max().item()
        if err > bound:
            print(f"FAIL {name}: max|g_c - g_t| {err:.3g} > {bound:.3g} (max|g_t| {g_t.abs().max().item():.3g})")
            failed = True
        if err / bound > worst_ratio:
            worst_name, worst_ratio, worst_err = name, err / bound, err
    print(f"worst gradient: {worst_name}: max|g_c - g_t| {worst_err:.3g}, {worst_ratio:.2f} of its tolerance "
          f"({GRAD_ABS:g} + {GRAD_REL:g} max|g_t|)")
    print("gpt_torch_check: FAILED" if failed else "gpt_torch_check: C and PyTorch agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
