"""state_check: tests/ckpt_state_check.c's general state, from Python: one rank of a real job.

    state_check.py save DIR [--small]   every rank saves its part of the state at step 1 (sovtrain.checkpoint.save)
    state_check.py load DIR/step-1      every rank reads every tensor whole and a box of each, and checks them

The state is the C program's, element for element: the same names, dtypes, shapes, shards and bytes (a pure
function of the saving job's world size). So a checkpoint saved here loads bitwise in `ckpt_state_check load`, and
one saved by it loads bitwise here. Ranks over 1 agree through torch.distributed (gloo)."""

import os
import sys

import numpy as np

if os.environ.get("SOVTRAIN_TEST_NO_TORCH"):  # numpy alone, though this Python has a torch
    sys.modules["torch"] = None

import sovtrain.checkpoint as ckpt

DTYPES = ["float32", "bfloat16", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
FEW = ["float32", "int32", "bool"]
SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64", "int64": "i64", "int32": "i32",
         "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool"}
SIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
        "uint8": 1, "bool": 1}
M64 = (1 << 64) - 1


def mix(x):
    """splitmix64 of numpy uint64 values (wrapping arithmetic, as C's)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def mix1(x):
    return int(mix(np.array([x & M64], dtype=np.uint64))[0])


def make_spec(i, small):
    h = mix1(i * 7919)
    dtype = FEW[i % 3] if small else DTYPES[i % 10]
    ndim = h % 5
    shape = [1 + mix1(h + d) % 9 for d in range(ndim)]
    if i % 97 == 13 and ndim == 0:
        ndim, shape = 2, [311, 257]
    if i % 41 == 5 and ndim > 0:
        shape[-1] = 0
    split = -1 if ndim == 0 or i % 3 else (1 if ndim > 1 and i % 2 else 0)
    if small:
        if ndim == 0:
            ndim, shape = 1, [1 + mix1(h) % 9]
        split = -1 if i < 3 else 0
    name = f"t{i:04d}.{SHORT[dtype]}" + (".sharded" if split >= 0 else "")
    return name, dtype, tuple(shape), split


def element_bytes(i, dtype, shape, off, box):
    """The box [off, off + box) of tensor i: its bytes as a uint8 array of shape box + (element size,)."""
    idx = np.indices(box, dtype=np.uint64).reshape(len(box), -1) if box else np.zeros((0, 1), np.uint64)
    flat = np.zeros(idx.shape[1], dtype=np.uint64)
    for d in range(len(shape)):
        flat = flat * np.uint64(shape[d]) + np.uint64(off[d]) + idx[d]
    v = mix(np.uint64(i << 40) ^ flat)
    if dtype == "bool":
        return (v & np.uint64(1)).astype(np.uint8).reshape(tuple(box) + (1,))
    return v.view(np.uint8).reshape(-1, 8)[:, :SIZE[dtype]].reshape(tuple(box) + (SIZE[dtype],))


def as_array(raw, dtype):
    """Element bytes as an array of the tensor's dtype (bfloat16 as its uint16 patterns: numpy has no type)."""
    np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
    shape = raw.shape[:-1]
    return np.ascontiguousarray(raw).view(np_dtype).reshape(shape)


def part(shape, dim, r, world):
    off = [0] * len(shape)
    box = list(shape)
    off[dim] = shape[dim] * r // world
    box[dim] = shape[dim] * (r + 1) // world - off[dim]
    return off, box


def ranks():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def tensor_for(raw, dtype):
    """The tensor to save: torch's where the dtype is bfloat16 (numpy has none), else a numpy array."""
    if dtype == "bfloat16":
        import torch
        return torch.from_numpy(as_array(raw, dtype).view(np.int16)).view(torch.bfloat16)
    return as_array(raw, dtype)


def key_file():
    """--key FILE: the checkpoint is encrypted with that key file."""
    return sys.argv[sys.argv.index("--key") + 1] if "--key" in sys.argv else None


def save(directory, count, small, rank, world):
    state = {"tensors": count, "saved_by": world}  # what the C check reads from the metadata first
    for i in range(count):
        name, dtype, shape, split = make_spec(i, small)
        if split >= 0:
            off, box = part(shape, split, rank, world)
            state[name] = ckpt.Shard(tensor_for(element_bytes(i, dtype, shape, off, box), dtype), off, shape)
        else:
            state[name] = tensor_for(element_bytes(i, dtype, shape, [0] * len(shape), shape), dtype)
    path = ckpt.save(state, directory, 1, keep=1, threads=2, blocking=True, key_file=key_file()).wait()
    if rank == 0:
        print(f"saved {path}: {count} tensors from {world} ranks")


def raw_of(a):
    """The bytes of a loaded tensor (torch or numpy) as uint8, one row per element."""
    if not isinstance(a, np.ndarray):
        import torch
        a = (a.view(torch.int16) if a.dtype == torch.bfloat16 else a).numpy()
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(a.shape + (a.itemsize,)) if a.ndim else a.reshape(1).view(np.uint8)


def load(path, rank, world):
    c = ckpt.Checkpoint(path, key_file=key_file())
    count = c.meta["python"]["tree"]["tensors"] if "python" in c.meta else c.meta["tensors"]
    state = ckpt.load(path, key_file=key_file())  # everything whole, in one pass
    for i in range(count):
        name, dtype, shape, split = make_spec(i, small=count < 100)
        got = raw_of(state[name])
        want = element_bytes(i, dtype, shape, [0] * len(shape), shape)
        if c.dtype(name) != dtype or c.shape(name) != shape or not np.array_equal(got.reshape(-1),
                                                                                   want.reshape(-1)):
            sys.exit(f"state_check: {name}: whole tensor differs (dtype {c.dtype(name)}, shape {c.shape(name)})")
        off, box = part(shape, 0, rank, world) if shape else ([], [])
        for d in range(1, len(shape)):
            if shape[d] > 2:
                off[d], box[d] = 1, shape[d] - 2
        got = raw_of(c.read(name, off, box, lib="numpy"))
        if not np.array_equal(got.reshape(-1), element_bytes(i, dtype, shape, off, box).reshape(-1)):
            sys.exit(f"state_check: {name}: box {off} {box} differs")
    print(f"rank {rank} of {world}: {count} tensors saved by {c.world_size} ranks read whole and by box, "
          "bitwise equal")
    c.close()


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("save", "load"):
        sys.exit("usage: state_check.py save DIR [--small] [--key FILE] | load DIR/step-1 [--key FILE]")
    rank, world = ranks()
    if sys.argv[1] == "save":
        small = "--small" in sys.argv[3:]
        save(sys.argv[2], 6 if small else 1100, small, rank, world)
    else:
        load(sys.argv[2], rank, world)


if __name__ == "__main__":
    main()
