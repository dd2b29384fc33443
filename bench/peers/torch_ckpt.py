#!/usr/bin/python3
"""bench/peers/torch_ckpt: the torch.save / torch.load peer for bench/ckpt_perf, on the same bytes, try by try.

    torch_ckpt.py RAW OUT

Reads RAW (a case's raw state, written by bench/ckpt_perf), builds a state dict of the same tensors as the case
(RAW.layout: "NAME D0[,D1]" per tensor, in order; f32, or bf16 for *bf16*.raw), prints "ready BYTES", then serves
one try per line on stdin, so that ckpt_perf can alternate
them with its own saves and restores and both sample the disk over the same minutes:
  save: torch.save to OUT (on the disk under test), then fsync of the file (the save's durable cost);
  load: torch.load of that file from the disk (its pages are dropped from the page cache first, as bench/ckpt_perf
        does for sovtrain's restore), checked against the state;
each answered with the try's seconds on one line (or "error: ..."). "quit" or the end of stdin ends it, removing
OUT. Exits 77 without torch (Debian's python3-torch)."""
import os
import sys
import time

try:
    import torch
except ImportError as e:
    print(f"torch_ckpt: PyTorch is not importable ({e}); apt-get install python3-torch", file=sys.stderr)
    sys.exit(77)


def save_once(state, out):
    if os.path.exists(out):  # the last try's file goes first, untimed: our saves' pruning is not timed either
        os.unlink(out)
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
    if loaded.keys() != state.keys() or not all(torch.equal(loaded[k], state[k]) for k in state):
        raise RuntimeError(f"{out} does not load back what was saved")
    return dt


def state_of(raw_path):
    """The case's tensors, each a tensor of its own (as a model's state dict has them), from RAW and RAW.layout."""
    data = bytearray(open(raw_path, "rb").read())
    dtype = torch.bfloat16 if "bf16" in os.path.basename(raw_path) else torch.float32
    flat = torch.frombuffer(data, dtype=dtype)
    state, at = {}, 0
    for line in open(raw_path + ".layout"):
        name, dims = line.split()
        shape = [int(d) for d in dims.split(",")]
        n = 1
        for d in shape:
            n *= d
        state[name] = flat[at:at + n].clone().reshape(shape)
        at += n
    if at != flat.numel():
        raise RuntimeError(f"{raw_path}.layout describes {at} elements, the file holds {flat.numel()}")
    return state


def serve(raw_path, out):
    state = state_of(raw_path)
    # the answers go on a copy of stdout; anything else printed there (a library's warning) goes to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def answer(text):
        print(text, file=answers, flush=True)

    answer(f"ready {sum(t.numel() * t.element_size() for t in state.values())}")
    try:
        for line in sys.stdin:
            what = line.strip()
            if what == "quit":
                break
            try:
                if what == "save":
                    answer(f"{save_once(state, out):.6f}")
                elif what == "load":
                    answer(f"{load_once(state, out):.6f}")
                else:
                    answer(f"error: unknown request {what!r} (save, load or quit)")
            except (OSError, RuntimeError) as e:
                answer(f"error: {e}")
    finally:
        if os.path.exists(out):
            os.unlink(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    serve(sys.argv[1], sys.argv[2])
