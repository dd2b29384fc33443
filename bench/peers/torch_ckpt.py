#!/usr/bin/python3
"""bench/peers/torch_ckpt: the torch.save / torch.load peer for bench/ckpt_perf, on the same bytes, try by try.

    torch_ckpt.py RAW

Reads RAW (a case's raw state, written by bench/ckpt_perf), builds a state dict of one f32 tensor over those bytes
(bf16 for *bf16*.raw), prints "ready BYTES", then serves one try per line on stdin, so that ckpt_perf can alternate
them with its own saves and restores and both see the disk in the same state:
  save: torch.save to RAW's name with .pt, then fsync of the file (the save's durable cost);
  load: torch.load of that file from the disk (its pages are dropped from the page cache first, as bench/ckpt_perf
        does for sovtrain's restore), checked against the state;
each answered with the try's seconds on one line (or "error: ..."). "quit" or the end of stdin ends it, removing
the .pt file. Exits 77 without torch (Debian's python3-torch)."""
import os
import sys
import time

try:
    import torch
except ImportError as e:
    print(f"torch_ckpt: PyTorch is not importable ({e}); apt-get install python3-torch", file=sys.stderr)
    sys.exit(77)


def save_once(state, out):
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def load_once(state, out):
    fd = os.open(out, os.O_RDONLY)  # from the disk, as sovtrain's restore: the (clean) pages leave the cache first
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    t0 = time.perf_counter()
    loaded = torch.load(out)
    dt = time.perf_counter() - t0
    if not torch.equal(loaded["params"], state["params"]):
        raise RuntimeError(f"{out} does not load back what was saved")
    return dt


def serve(raw_path):
    data = bytearray(open(raw_path, "rb").read())
    dtype = torch.bfloat16 if "bf16" in os.path.basename(raw_path) else torch.float32
    state = {"params": torch.frombuffer(data, dtype=dtype).clone()}
    del data
    out = raw_path[:-len(".raw")] + ".pt" if raw_path.endswith(".raw") else raw_path + ".pt"
    print(f"ready {state['params'].numel() * state['params'].element_size()}", flush=True)
    try:
        for line in sys.stdin:
            what = line.strip()
            if what == "quit":
                break
            try:
                if what == "save":
                    print(f"{save_once(state, out):.6f}", flush=True)
                elif what == "load":
                    print(f"{load_once(state, out):.6f}", flush=True)
                else:
                    print(f"error: unknown request {what!r} (save, load or quit)", flush=True)
            except (OSError, RuntimeError) as e:
                print(f"error: {e}", flush=True)
    finally:
        if os.path.exists(out):
            os.unlink(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    serve(sys.argv[1])
