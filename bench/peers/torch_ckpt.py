#!/usr/bin/python3
"""bench/peers/torch_ckpt: the torch.save / torch.load peer for bench/ckpt_perf, on the same bytes.

For each RAW file given (a case's raw state, written by `ckpt_perf --torch-dump DIR`), builds a state dict of one
f32 tensor (or bf16 for *bf16*.raw) over those bytes, then times torch.save to DIR/NAME.pt followed by fsync of the
file (the save's durable cost), and torch.load of it back from the disk (the file is dropped from the page cache
first, as bench/ckpt_perf does for sovtrain's files). Prints one JSON line per case:
{"bench":"ckpt","case","impl":"torch","bytes","torch_save_gbs","torch_load_gbs"}. Exit 77 without torch."""
import json
import math
import os
import sys
import time

try:
    import torch
except ImportError as e:
    print(f"torch_ckpt: PyTorch is not importable ({e}); apt-get install python3-torch", file=sys.stderr)
    sys.exit(77)


def tries_for(nbytes):
    """bench/ckpt_perf's rule, so that both get as many tries: 3, or more for a small state (up to 12)."""
    return max(3, min(12, math.ceil(192 * 1048576 / nbytes))) if nbytes > 0 else 3


def measure(raw_path):
    name = os.path.basename(raw_path)[:-len(".raw")]
    data = bytearray(open(raw_path, "rb").read())
    dtype = torch.bfloat16 if "bf16" in name else torch.float32
    state = {"params": torch.frombuffer(data, dtype=dtype).clone()}
    out = raw_path[:-len(".raw")] + ".pt"
    best_save = best_load = float("inf")
    for _ in range(tries_for(len(data))):  # as many tries as bench/ckpt_perf gives sovtrain's save and restore
        t0 = time.perf_counter()
        with open(out, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
            # torch.load reads from the disk, as sovtrain's restore does: drop the (clean) pages from the cache
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        best_save = min(best_save, time.perf_counter() - t0)
        t0 = time.perf_counter()
        loaded = torch.load(out)
        best_load = min(best_load, time.perf_counter() - t0)
        assert torch.equal(loaded["params"], state["params"])
    os.unlink(out)
    n = len(data)
    print(json.dumps({"bench": "ckpt", "case": name, "impl": "torch", "torch": torch.__version__, "bytes": n,
                      "torch_save_gbs": round(n / best_save / 1e9, 4), "torch_load_gbs": round(n / best_load / 1e9, 4)}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for path in sys.argv[1:]:
        measure(path)
