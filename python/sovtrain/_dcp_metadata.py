"""DCP's Metadata as JSON for the manifest, compact and exact (never pickled).

    {"version": V, "tensors": {FQN: [DTYPE, SIZE, CHUNKS, PROPERTIES?]}, "bytes": [FQN, ...],
     "storage": [[FQN, OFFSET, WHERE], ...], "planner": PLANNER_DATA, "storage_meta": {...} | null}

CHUNKS is [[OFFSETS, SIZES], ...]. PROPERTIES holds only what differs from a contiguous, strided tensor without
grad in pageable memory (keys requires_grad, layout, memory_format, pin_memory, strides). WHERE ({"name", "offset"})
says where a chunk lies in the checkpoint: its tensor's name and the chunk's offset in it; "storage" lists only the
chunks that do not lie where stored_name(FQN) and their own offsets say (a tensor's own, or [0] for bytes).
PLANNER_DATA is {"paths": {FQN: [KEY, ...]}} for the default planners' map from flattened names to their paths in
the state_dict, else {"tree": ...} in sovtrain's JSON tree (_tree.py)."""

import os

import torch
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, StorageMeta, TensorProperties, TensorStorageMetadata)

from . import _tree

_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
            "preserve": torch.preserve_format}


def _contiguous_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


def _properties(p, size):
    out = {}
    if p.requires_grad:
        out["requires_grad"] = True
    if p.layout != torch.strided:
        out["layout"] = str(p.layout).removeprefix("torch.")
    if p.memory_format != torch.contiguous_format:
        out["memory_format"] = next(k for k, v in _FORMATS.items() if v == p.memory_format)
    if p.pin_memory:
        out["pin_memory"] = True
    if p.strides is None or tuple(p.strides) != _contiguous_strides(size):
        out["strides"] = None if p.strides is None else list(p.strides)
    return out


def _properties_back(dtype, size, j):
    strides = j["strides"] if "strides" in j else list(_contiguous_strides(size))
    return TensorProperties(dtype=getattr(torch, dtype), layout=getattr(torch, j.get("layout", "strided")),
                            requires_grad=j.get("requires_grad", False),
                            memory_format=_FORMATS[j.get("memory_format", "contiguous")],
                            pin_memory=j.get("pin_memory", False),
                            strides=None if strides is None else tuple(strides))


def _planner(data):
    if isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, tuple) and
                                      all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v)
                                      for k, v in data.items()):
        return {"paths": {k: list(v) for k, v in data.items()}}
    tree, tensors = _tree.flatten(data)
    if tensors:
        raise TypeError("sovtrain.dcp: DCP's planner data holds tensors, which its metadata cannot keep as JSON")
    return {"tree": tree}


def _planner_back(j):
    if "paths" in j:
        return {k: tuple(v) for k, v in j["paths"].items()}
    return _tree.unflatten(j["tree"], None)


def to_json(md, where_of, stored_name):
    """md: DCP's Metadata; where_of: {MetadataIndex: WHERE} from the write results; stored_name(fqn): a tensor's
    default name in the checkpoint."""
    tensors, blobs, storage = {}, [], []
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            blobs.append(fqn)
            continue
        entry = [str(m.properties.dtype).removeprefix("torch."), list(m.size),
                 [[list(c.offsets), list(c.sizes)] for c in m.chunks]]
        props = _properties(m.properties, m.size)
        tensors[fqn] = entry + [props] if props else entry
    for index, where in where_of.items():
        default = {"name": stored_name(index.fqn), "offset": [0] if index.offset is None else list(index.offset)}
        if where != default:
            storage.append([index.fqn, None if index.offset is None else list(index.offset), where])
    sm = md.storage_meta
    return {"version": md.version, "tensors": tensors, "bytes": blobs, "storage": storage,
            "planner": _planner(md.planner_data),
            "storage_meta": None if sm is None else {
                "checkpoint_id": None if sm.checkpoint_id is None else os.fspath(sm.checkpoint_id),
                "save_id": sm.save_id, "load_id": sm.load_id, "modules": list(sm.modules)}}


def from_json(j, stored_name):
    """DCP's Metadata, with storage_data {MetadataIndex: WHERE} for every chunk and every bytes item."""
    entries, where_of = {}, {}
    for fqn, e in j["tensors"].items():
        dtype, size, chunks = e[0], e[1], e[2]
        entries[fqn] = TensorStorageMetadata(
            properties=_properties_back(dtype, size, e[3] if len(e) > 3 else {}), size=torch.Size(size),
            chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s)) for o, s in chunks])
        for o, _ in chunks:
            where_of[MetadataIndex(fqn, o)] = {"name": stored_name(fqn), "offset": list(o)}
    for fqn in j["bytes"]:
        entries[fqn] = BytesStorageMetadata()
        where_of[MetadataIndex(fqn)] = {"name": stored_name(fqn), "offset": [0]}
    for fqn, offset, where in j["storage"]:
        where_of[MetadataIndex(fqn, offset)] = where
    sm = j.get("storage_meta")
    return Metadata(state_dict_metadata=entries, planner_data=_planner_back(j["planner"]), storage_data=where_of,
                    version=j.get("version"), storage_meta=None if sm is None else StorageMeta(**sm))
