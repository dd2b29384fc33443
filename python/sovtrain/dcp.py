"""sovtrain.dcp: a storage backend for torch.distributed.checkpoint (DCP): DCP plans and reshards, sovtrain
stores.

    writer = sovtrain.dcp.StorageWriter("run/checkpoints", step=100)
    torch.distributed.checkpoint.save(state_dict, storage_writer=writer)          # or async_save
    torch.distributed.checkpoint.load(state_dict, storage_reader=sovtrain.dcp.StorageReader("run/checkpoints"))

Each write item of DCP's plan becomes a tensor of a sovtrain checkpoint (DIR/step-N): a rank's chunk of a
sharded tensor is that rank's box of it, a replicated tensor is written whole by the one rank DCP's planner picks,
and a non-tensor value is its bytes (uint8) as DCP serialises it. So every item is compressed and checksummed,
and `sovtrain ckpt verify|ls|inspect|export` work on these checkpoints. DCP's metadata is kept as JSON in the
manifest (never pickled), and the commit is sovtrain's: nothing is visible before the manifest, and DIR/latest
moves last. The metadata reaches the manifest through sov_ckpt_defer_meta / sov_ckpt_commit_meta, because DCP
knows it only after every rank has written."""

import dataclasses
import hashlib
import io
import json
import os
import re
import secrets

import torch
from torch.distributed.checkpoint import StorageReader as _Reader, StorageWriter as _Writer
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from . import _dcp_metadata, _lib, _tensors, _tree
from . import checkpoint as _ckpt

__all__ = ["StorageWriter", "StorageReader"]

META_KEY = "dcp"  # the manifest's meta holds DCP's metadata under this key
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _split_checkpoint_id(path):
    """(directory, step) of a checkpoint id DIR/step-N."""
    path = os.fspath(path).rstrip("/")
    m = _STEP_DIR.match(os.path.basename(path))
    if not m:
        raise ValueError(f"sovtrain.dcp: checkpoint id {path!r} is not DIR/step-N: give StorageWriter(dir, step=N), "
                         "or a checkpoint_id that names the step")
    return os.path.dirname(path) or ".", int(m.group(1))


def _stored_name(fqn, offsets=None):
    """The checkpoint's name for an item: its fully qualified name, with the chunk's offsets where a rank writes
    more than one chunk of it; a hash stands in for what does not fit in a name."""
    name = fqn if offsets is None else f"{fqn}@{','.join(str(o) for o in offsets)}"
    if len(name.encode()) <= _tree.MAX_NAME:
        return name
    return name.encode()[:_tree.MAX_NAME - 17].decode(errors="ignore") + "~" + hashlib.sha256(
        name.encode()).hexdigest()[:16]


class StorageWriter(_Writer):
    """Writes DCP checkpoints as sovtrain checkpoints: DIR/step-STEP, keeping the newest `keep`.
    dir and step may instead come from dcp.save's checkpoint_id (DIR/step-N). threads: compression threads per
    rank (default: this host's cores shared by its ranks, at most 8). key_file / key_command: encrypted at rest
    (docs/security.md); the coordinator makes each save's data key, which reaches the ranks in DCP's plan."""

    def __init__(self, dir=None, step=None, *, keep=3, threads=None, key_file=None, key_command=None):
        super().__init__()
        self.dir, self.step, self.keep, self.threads = dir, step, keep, threads
        self.key = _ckpt.Key.of(key_file, key_command)
        self._writer, self._handle = None, None
        self.checkpoint_id = os.path.join(dir, f"step-{step}") if dir is not None and step is not None else None

    def reset(self, checkpoint_id=None):
        if checkpoint_id is not None:
            self.dir, self.step = _split_checkpoint_id(checkpoint_id)
            self.checkpoint_id = os.fspath(checkpoint_id)
        if self.dir is None or self.step is None:
            raise ValueError("sovtrain.dcp: StorageWriter needs a directory and a step: StorageWriter(dir, step=N), "
                             "or dcp.save(..., checkpoint_id='DIR/step-N')")

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        self.is_coordinator = is_coordinator
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = kwargs.get("rank", dist.get_rank() if initialised else 0)
        self.world = dist.get_world_size() if initialised and kwargs.get("use_collectives", True) else 1
        if kwargs.get("use_collectives", True) is False:
            self.rank = 0

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        """The coordinator names the save (one id for all ranks) and the fqns that some rank writes more than one
        chunk of: those chunks are stored under names of their own."""
        split = set()
        for plan in plans:
            seen = set()
            for item in plan.items:
                if item.type != WriteItemType.BYTE_IO:
                    fqn = item.index.fqn
                    if fqn in seen:
                        split.add(fqn)
                    seen.add(fqn)
        shared = {"save_id": secrets.randbits(63) or 1, "split": sorted(split),
                  "data_key": secrets.token_hex(32) if self.key else None}
        return [dataclasses.replace(plan, storage_data=shared) for plan in plans]

    def _open_writer(self):
        """The process's writer for this directory (sovtrain.checkpoint's, kept between saves). One whose last
        save still waits for DCP's metadata belongs to a save that DCP gave up on (its finish never came): it is
        closed, which fails that save, and a new one is opened."""
        args = (self.dir, self.rank, self.world, self.keep, self.threads or _ckpt._default_threads(), self.key)
        writer = _ckpt._writer(*args)
        if getattr(writer, "awaiting_meta", False):
            _ckpt._drop_writer(writer)
            writer = _ckpt._writer(*args)
        self._writer = writer
        return writer

    def write_data(self, plan, planner):
        split = set(plan.storage_data["split"])
        tensors, results = [], []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                raw = torch.frombuffer(bytearray(data.getbuffer()), dtype=torch.uint8)
                name, at = _stored_name(item.index.fqn), [0]
                tensors.append((name, _tensors.Shard(raw, (0,), raw.shape)))
                nbytes = raw.numel()
            else:
                t = data.detach()
                chunk, size = item.tensor_data.chunk, item.tensor_data.size
                if item.index.fqn in split:
                    name, at = _stored_name(item.index.fqn, chunk.offsets), [0] * len(chunk.sizes)
                    tensors.append((name, _tensors.Shard(t, at, chunk.sizes)))
                else:
                    name, at = _stored_name(item.index.fqn), list(chunk.offsets)
                    tensors.append((name, _tensors.Shard(t, chunk.offsets, size)))
                nbytes = t.numel() * t.element_size()
            results.append(WriteResult(index=item.index, size_in_bytes=nbytes,
                                       storage_data={"name": name, "offset": at}))
        writer = self._open_writer()
        previous = writer.finish_current()
        if previous:
            raise previous
        writer.data_key = bytes.fromhex(plan.storage_data["data_key"]) if self.key else None
        self._handle = _ckpt._start(writer, tensors, self.step, plan.storage_data["save_id"], None, self.dir,
                                    meta_later=True)
        writer.awaiting_meta = self.is_coordinator
        if not self.is_coordinator:
            self._handle.wait()  # this rank's part is durable (rank 0's commit waits for it)
        future = Future()
        future.set_result(results)
        return future

    def finish(self, metadata, results):
        """The coordinator: DCP's metadata, as JSON, into the manifest, and the commit."""
        where_of = {r.index: r.storage_data for rank_results in results for r in rank_results}
        meta = json.dumps({META_KEY: _dcp_metadata.to_json(metadata, where_of, _stored_name)}, allow_nan=False,
                          separators=(",", ":"))
        _lib.check(_lib.lib.sov_ckpt_commit_meta(self._writer.ptr, meta.encode()),
                   f"sovtrain.dcp: commit of step {self.step} in {self.dir}")
        self._writer.awaiting_meta = False
        self._handle.wait()

    def storage_meta(self):
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=None)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        try:
            _split_checkpoint_id(checkpoint_id)
            return True
        except (ValueError, TypeError):
            return False


class StorageReader(_Reader):
    """Reads a DCP checkpoint that StorageWriter wrote: `path` is DIR/step-N, or a checkpoint directory, whose
    newest checkpoint that opens is read. Every chunk read is checked against its checksum. key_file /
    key_command: the key of an encrypted checkpoint (each rank opens it, so a key command runs once per rank)."""

    def __init__(self, path=None, *, key_file=None, key_command=None):
        super().__init__()
        self.path, self._ckpt = path, None
        self.key = _ckpt.Key.of(key_file, key_command)
        self.checkpoint_id = path

    def reset(self, checkpoint_id=None):
        if checkpoint_id is not None:
            self.path = self.checkpoint_id = os.fspath(checkpoint_id)
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None

    def _open(self):
        if self._ckpt is None:
            candidates = _ckpt.resolve(self.path)
            if not candidates:
                raise _lib.SovError(_lib.ERR_IO, f"sovtrain.dcp: no checkpoint in {self.path}")
            self._ckpt = _ckpt.Checkpoint(candidates[0], key=self.key)
            if self._ckpt.key_id and self.key is None:
                raise _lib.SovError(_lib.ERR_INVALID, f"sovtrain.dcp: {candidates[0]} is encrypted with key id "
                                    f"{self._ckpt.key_id}: give StorageReader its key (key_file or key_command)")
            if not isinstance(self._ckpt.meta, dict) or META_KEY not in self._ckpt.meta:
                raise _lib.SovError(_lib.ERR_FORMAT, f"sovtrain.dcp: {candidates[0]} holds no DCP metadata (it was "
                                    "not written through sovtrain.dcp.StorageWriter): load it with "
                                    "sovtrain.checkpoint.load")
        return self._ckpt

    def read_metadata(self, *args, **kwargs):
        if kwargs.get("rank") is not None:
            raise FileNotFoundError("sovtrain.dcp: no rank-local metadata: one manifest serves every rank")
        return _dcp_metadata.from_json(self._open().meta[META_KEY], _stored_name)

    def set_up_storage_reader(self, metadata, is_coordinator, *args, **kwargs):
        self.storage = metadata.storage_data

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        return plans

    def read_data(self, plan, planner):
        """Every item of this rank's plan in one pass (sov_ckpt_read_many), straight into DCP's destination where
        it is contiguous host memory of the stored dtype."""
        c = self._open()
        reads, after = [], []
        for item in plan.items:
            where = self.storage[item.storage_index]
            name = where["name"]
            dtype, shape = c._info(name)
            target = None if item.type == LoadItemType.BYTE_IO else planner.resolve_tensor(item).detach()
            if target is None or _tensors.SOV_DTYPES[dtype] != _tensors.dtype_name(target):
                dst = _tensors.empty("torch", dtype, shape)  # bytes, or a dtype stored as bytes: read it whole
                reads.append((name, dtype, None, None, dst))
            else:
                start = [a + o for a, o in zip(where["offset"], item.storage_offsets)]
                lengths = tuple(item.lengths)
                dst = target if _tensors.readable_in_place(target, dtype, lengths) else _tensors.empty(
                    "torch", dtype, lengths)
                reads.append((name, dtype, start, list(lengths), dst))
            after.append((item, where["offset"], dst, target))
        c._read_many(reads)
        for item, at, dst, target in after:
            if target is None:
                planner.load_bytes(item, io.BytesIO(dst.numpy().tobytes()))
                continue
            if dst.dtype != target.dtype:  # the stored tensor's bytes, as elements of the target's dtype
                start = [a + o for a, o in zip(at, item.storage_offsets)]
                dst = dst.view(target.dtype)[tuple(slice(s, s + n) for s, n in zip(start, item.lengths))]
            if dst is not target:
                target.copy_(dst)
            planner.commit_tensor(item, target)
        future = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return os.path.isdir(os.fspath(checkpoint_id))
