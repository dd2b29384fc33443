"""dcp_check: torch.distributed.checkpoint through sovtrain.dcp, one rank of a real job (gloo).

    dcp_check.py save DIR STEP [--async]   every rank saves the state below at STEP (dcp.save or dcp.async_save)
    dcp_check.py load PATH                 loads into a template of this world size and checks every tensor
    dcp_check.py corrupt PATH N            N sampled single-byte flips over every file: each must be detected

The state: a model's tensors and plain values (replicated: DCP's planner writes each once), DTensors sharded by rows
and by columns over the ranks (uneven), and tensors of bf16, int64, bool and float8. Their values are a pure
function of their names, so any world size checks them. A load at 1 rank runs without a process group (DCP's
no_dist), and one at more ranks loads into DTensors of its own mesh: DCP reshards."""

import os
import random
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import sovtrain.checkpoint
import sovtrain.dcp

SHAPES = {"model.embed.weight": ((40, 16), torch.float32), "model.head.bias": ((10,), torch.float32),
          "model.norm.weight": ((16,), torch.bfloat16), "counts": ((5, 3), torch.int64), "mask": ((33,), torch.bool),
          "scale": ((4, 4), torch.float8_e4m3fn), "step": ((), torch.float32)}
SHARDED = {"rows": ((10, 7), 0), "cols": ((6, 9), 1)}  # name: (shape, the dimension split over the ranks)
PLAIN = {"epoch": 7, "name": "fashion", "betas": (0.9, 0.95)}


def values(name, shape, dtype):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(shape, generator=g)
    return (x > 0) if dtype == torch.bool else (x * 100).to(dtype) if not dtype.is_floating_point else x.to(dtype)


def mesh():
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh("cpu", (dist.get_world_size(),))


def state(filled):
    """The state to save (filled) or a template to load into (zeros, plain values wrong)."""
    make = (lambda n, s, d: values(n, s, d)) if filled else (lambda n, s, d: torch.zeros(s, dtype=d))
    st = {n: make(n, s, d) for n, (s, d) in SHAPES.items()}
    st["plain"] = dict(PLAIN) if filled else {"epoch": 0, "name": "", "betas": (0.0, 0.0)}
    for n, (s, dim) in SHARDED.items():
        full = make(n, s, torch.float32)
        if dist.is_initialized():
            from torch.distributed.tensor import Shard, distribute_tensor
            st[n] = distribute_tensor(full, mesh(), [Shard(dim)])
        else:
            st[n] = full
    return st


def same(a, b):
    a = a.full_tensor() if hasattr(a, "full_tensor") else a
    b = b.full_tensor() if hasattr(b, "full_tensor") else b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


def check(loaded):
    want = state(True)
    for n, v in want.items():
        if n == "plain":
            if loaded[n] != v:
                sys.exit(f"dcp_check: plain values {loaded[n]} != {v}")
        elif not same(loaded[n], v):
            sys.exit(f"dcp_check: tensor {n} differs")


def key_file():
    """--key FILE: the checkpoint is encrypted with that key file."""
    return sys.argv[sys.argv.index("--key") + 1] if "--key" in sys.argv else None


def load(path, st):
    dcp.load(st, storage_reader=sovtrain.dcp.StorageReader(path, key_file=key_file()))
    return st


def corrupt(path, count):
    """Flips sampled single bytes of every file of checkpoint `path`, one at a time: each must fail the verify or
    the load; the file is restored after each."""
    files = sorted(os.path.join(path, f) for f in os.listdir(path))
    rng = random.Random(5)
    per_file = -(-count // len(files))
    detected = tried = 0
    for f in files:
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            for k in range(per_file):
                at = rng.randrange(size)
                fh.seek(at)
                old = fh.read(1)[0]
                fh.seek(at)
                fh.write(bytes([old ^ (1 << rng.randrange(8))]))
                fh.flush()
                tried += 1
                try:
                    if k % 100 == 0:  # some through DCP's load itself
                        load(path, state(False))
                    else:
                        sovtrain.checkpoint.verify(path, key_file=key_file())
                except (Exception, CheckpointException) as e:  # DCP's wraps the reader's (not an Exception)
                    if "sovtrain" in str(e):
                        detected += 1
                    else:
                        print(f"dcp_check: {os.path.basename(f)} byte {at}: not sovtrain's error: {e}")
                fh.seek(at)
                fh.write(bytes([old]))
                fh.flush()
    print(f"{detected}/{tried} single-byte corruptions detected over {len(files)} files "
          f"({', '.join(os.path.basename(f) for f in files)})")
    return detected == tried


def main():
    mode = sys.argv[1]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    if mode == "save":
        writer = sovtrain.dcp.StorageWriter(sys.argv[2], step=int(sys.argv[3]), key_file=key_file())
        if "--async" in sys.argv:
            dcp.async_save(state(True), storage_writer=writer).result()
        else:
            dcp.save(state(True), storage_writer=writer)
        print("saved")
    elif mode == "load":
        check(load(sys.argv[2], state(False)))
        print(f"rank {dist.get_rank() if dist.is_initialized() else 0}: every tensor equal")
    elif mode == "corrupt":
        sys.exit(0 if corrupt(sys.argv[2], int(sys.argv[3])) else 1)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
