"""Arrays on both sides of libsovtrain: torch tensors and numpy arrays as host memory with a sov_dtype, and new
arrays for what a checkpoint holds. torch is optional: without it everything is numpy."""

import numpy as np

try:
    import torch
except ImportError:  # numpy alone is enough
    torch = None

# sov_dtype (sov.h), by position
SOV_DTYPES = ["float32", "bfloat16", "float16", "float64", "uint8", "int64", "int32", "int16", "int8", "bool"]
U8 = SOV_DTYPES.index("uint8")
BF16 = SOV_DTYPES.index("bfloat16")


class Shard:
    """This rank's part of a sharded tensor: `local` holds the box [offset, offset + local.shape) of a tensor of
    `shape`. The boxes that the ranks give must tile the tensor; a load reads any box of it at any world size."""

    def __init__(self, local, offset, shape):
        if not is_tensor(local) or isinstance(local, Shard):
            raise TypeError(f"sovtrain: Shard: local must be a tensor or array, not {type(local).__name__}")
        self.local, self.offset, self.shape = local, tuple(int(o) for o in offset), tuple(int(n) for n in shape)
        box = shape_of(local)
        if not (len(self.offset) == len(self.shape) == len(box)) or any(
                o < 0 or o + n > s for o, n, s in zip(self.offset, box, self.shape)):
            raise ValueError(f"sovtrain: Shard: the box at {self.offset} of shape {box} is not inside a tensor of "
                             f"shape {self.shape}")

    def __repr__(self):
        return f"Shard(offset={self.offset}, shape={self.shape}, local={self.local!r})"


def dtensor_shard(x):
    """A torch DTensor as this rank's Shard of the whole tensor, with whether its box duplicates that of another
    rank (a Replicate placement: only the rank at coordinate 0 of such mesh dimensions saves it). None for
    anything that is not a DTensor."""
    if torch is None or type(x).__name__ != "DTensor":
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    if any(p.is_partial() for p in x.placements):
        raise ValueError("sovtrain: a DTensor with a Partial placement holds no values yet: reduce it "
                         "(redistribute to Shard or Replicate) before saving")
    _, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    coordinate = x.device_mesh.get_coordinate()
    duplicate = any(p.is_replicate() and coordinate[d] != 0 for d, p in enumerate(x.placements))
    local = x.to_local()
    return Shard(local, offset if local.dim() else (), tuple(x.shape)), duplicate


def is_tensor(x):
    return ((torch is not None and isinstance(x, torch.Tensor)) or isinstance(x, (np.ndarray, np.generic, Shard)))


def is_mutable(x):
    """A tensor, array or shard that a load can write into (a numpy scalar is a value, replaced instead)."""
    return (torch is not None and isinstance(x, torch.Tensor)) or isinstance(x, (np.ndarray, Shard))


def lib_of(x):
    if isinstance(x, Shard):
        return lib_of(x.local)
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    return "numpy-scalar" if isinstance(x, np.generic) else "numpy"


def dtype_name(x):
    """The element type's name: torch's without "torch.", numpy's own (both say "float32", "bool", ...)."""
    if isinstance(x, Shard):
        return dtype_name(x.local)
    if lib_of(x) == "torch":
        return str(x.dtype).removeprefix("torch.")
    return np.asarray(x).dtype.name


def host(x):
    """(sov_dtype, contiguous host array, bytes per stored element of the last dimension) for tensor x. A dtype that a checkpoint has no type for
    (complex, float8, unsigned 16-64 bit...) is stored as its bytes (uint8, one more dimension) and its own name is
    kept beside it, so it loads back as it was. A GPU tensor comes to host memory first."""
    if lib_of(x) == "torch":
        t = x.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.contiguous()
        name = dtype_name(t)
        if name in SOV_DTYPES:
            return SOV_DTYPES.index(name), t, 1
        return U8, (t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)), t.element_size()
    a = np.asarray(x)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    name = a.dtype.name
    if name in SOV_DTYPES:
        return SOV_DTYPES.index(name), a, 1
    if name == "bfloat16":  # ml_dtypes' bfloat16
        return BF16, a, 1
    return U8, a.reshape(a.shape or (1,)).view(np.uint8), a.itemsize


def data_ptr(a):
    return a.data_ptr() if torch is not None and isinstance(a, torch.Tensor) else a.ctypes.data


def shape_of(a):
    if isinstance(a, Shard):
        return a.shape
    return tuple(int(d) for d in a.shape)


def _numpy_dtype(name):
    if name == "bfloat16":
        try:
            import ml_dtypes
            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:
            return np.dtype(np.uint16)  # bfloat16's bit patterns, where nothing in numpy names the type
    return np.dtype(name)


def empty(lib, sov_dtype, shape):
    """A new host array for a tensor stored as sov_dtype, of the library it was saved from where it can be."""
    name = SOV_DTYPES[sov_dtype]
    if lib == "torch" and torch is not None:
        return torch.empty(shape, dtype=getattr(torch, name))
    return np.empty(shape, dtype=_numpy_dtype(name))


def restore(a, lib, dtype, shape):
    """Array `a` as read turned back into the tensor that was saved: its own dtype where it was stored as bytes,
    a numpy scalar where it was one."""
    if dtype not in SOV_DTYPES:
        if torch is not None and isinstance(a, torch.Tensor):
            a = a.view(getattr(torch, dtype)).reshape(shape)
        else:
            try:
                a = a.view(np.dtype(dtype)).reshape(shape)
            except TypeError:  # a torch-only type read without torch: its bytes, as stored
                pass
    if lib == "numpy-scalar":
        return np.asarray(a)[()]
    return a


def copy_into(target, source, name):
    """Copies a loaded tensor into an existing tensor or array of the same shape (loading in place)."""
    if shape_of(target) != shape_of(source):
        raise ValueError(f"sovtrain: load into: tensor {name!r} has shape {shape_of(target)} in `into`, "
                         f"{shape_of(source)} in the checkpoint")
    if lib_of(target) == "torch":
        src = source if isinstance(source, torch.Tensor) else torch.from_numpy(np.asarray(source))
        with torch.no_grad():
            target.copy_(src)
    else:
        src = source.numpy() if torch is not None and isinstance(source, torch.Tensor) else source
        np.copyto(target, src, casting="same_kind")


def readable_in_place(target, sov_dtype, shape):
    """Whether a checkpoint's tensor can be read straight into `target`'s memory: host memory, contiguous, the same
    element type and shape."""
    if lib_of(target) == "torch":
        return (target.device.type == "cpu" and target.is_contiguous() and dtype_name(target) == SOV_DTYPES[sov_dtype]
                and shape_of(target) == shape)
    return (isinstance(target, np.ndarray) and target.flags.c_contiguous and target.flags.writeable
            and target.dtype.name == SOV_DTYPES[sov_dtype] and shape_of(target) == shape)
