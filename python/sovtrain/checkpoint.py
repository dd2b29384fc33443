"""sovtrain's checkpoints for Python: save a training state, load it back, find the latest, verify one.

    handle = sovtrain.checkpoint.save(state, "run/checkpoints", step)   # returns after one copy of the state
    ...                                                                   # training goes on; C threads write
    state = sovtrain.checkpoint.load("run/checkpoints")                   # the newest checkpoint that loads

A state is nested dicts, lists and tuples of torch tensors, numpy arrays and plain values (numbers, strings,
bytes, None), which are kept as JSON in the checkpoint's metadata (see _tree.py). Tensors are replicated: every
rank gives the same values and each writes 1/N of their bytes. The checkpoints are the ones `sovtrain train`
writes (docs/checkpoint-format.md): `sovtrain ckpt verify|ls|inspect|export` work on them, and the C API reads
them.

Encryption at rest (docs/security.md): give key_file=PATH (a 32-byte key readable by its owner only) or
key_command=CMD (a command that wraps and unwraps data keys: Vault transit, an HSM, a KMS) to save, load, verify
and Checkpoint, as `sovtrain train --ckpt-key-file/--ckpt-key-command` take them. Each process that opens an
encrypted checkpoint with a key command runs it once.

Signatures in the OpenSSF model signing format: sign_key=PEM (an ECDSA private key, read on rank 0) makes save
write model.sig; require_signed=PEM (the public key) makes load, verify and Checkpoint refuse a checkpoint that it
did not sign, or whose files changed since."""

import atexit
import ctypes
import json
import os
import secrets
import sys
import threading

from . import _lib, _ranks, _tensors, _tree
from ._lib import SovError
from ._tensors import Shard

__all__ = ["save", "load", "latest", "verify", "verify_signature", "Checkpoint", "SaveHandle", "Shard", "SovError",
           "Key"]

# The key under which the manifest's meta keeps a Python state's tree.
META_KEY = "python"
TREE_VERSION = 1


class Key:
    """The operator's key: a key file or a key command (sov_ckpt_key). Key.of(key_file, key_command) is the key
    that those arguments name, or None."""

    def __init__(self, key_file=None, key_command=None):
        if (key_file is None) == (key_command is None):
            raise ValueError("sovtrain: give key_file or key_command, one of them")
        self._ptr = ctypes.c_void_p()
        if key_file is not None:
            _lib.check(_lib.lib.sov_ckpt_key_from_file(os.fsencode(key_file), ctypes.byref(self._ptr)), "sovtrain")
        else:
            _lib.check(_lib.lib.sov_ckpt_key_from_command(key_command.encode(), ctypes.byref(self._ptr)), "sovtrain")
        self.spec = ("file", os.path.realpath(key_file)) if key_file is not None else ("command", key_command)

    @staticmethod
    def of(key_file=None, key_command=None):
        return Key(key_file, key_command) if key_file is not None or key_command is not None else None

    def __str__(self):
        return _lib.lib.sov_ckpt_key_describe(self._ptr).decode(errors="replace")

    def __del__(self):
        if getattr(self, "_ptr", None):
            _lib.lib.sov_ckpt_key_free(self._ptr)
            self._ptr = None


class SaveHandle:
    """A save in flight. wait() returns the checkpoint's path once it is durable (on rank 0: committed and named by
    DIR/latest), or raises the save's failure."""

    def __init__(self, writer, step, stall_s):
        self._writer, self.step, self.stall_s = writer, step, stall_s
        self._done, self._path, self._error = False, None, None

    def _finish(self):
        if not self._done:
            path = ctypes.create_string_buffer(4200)
            status = _lib.lib.sov_ckpt_wait(self._writer.ptr, path, len(path))
            self._done = True
            if status == _lib.OK:
                self._path = path.value.decode() or os.path.join(self._writer.dir, f"step-{self.step}")
                self.save_s = _lib.lib.sov_ckpt_save_seconds(self._writer.ptr)
            else:
                self._error = SovError(status, _lib.lib.sov_last_error().decode(errors="replace"))
        return self._error

    def done(self):
        return self._done

    def wait(self):
        error = self._finish()
        self._writer.reported(self)
        if error:
            raise error
        return self._path


class _Writer:
    """One sov_ckpt_writer per checkpoint directory and rank, kept between saves for its staging memory."""

    def __init__(self, directory, rank, size, keep, threads, key=None, sign_key=None):
        options = _lib.Options(keep=keep, threads=threads)
        self.signer = ctypes.c_void_p()
        if sign_key is not None:  # the private key is needed where the commit runs: rank 0
            options.sign = 1
            if rank == 0:
                _lib.check(_lib.lib.sov_ckpt_signer_from_pem(os.fsencode(sign_key), ctypes.byref(self.signer)),
                           "sovtrain")
                options.signer = self.signer
        # An encrypted save's data key: rank 0 makes it with the save's id and each rank hands it to the C writer,
        # which asks for it through share_key (so no collective runs inside the C call).
        self.key, self.data_key = key, None
        self._share = _lib.SHARE_KEY(self._give_data_key)
        if key is not None:
            options.key, options.share_key = key._ptr, ctypes.cast(self._share, ctypes.c_void_p)
        ptr = ctypes.c_void_p()
        _lib.check(_lib.lib.sov_ckpt_writer_open(ctypes.byref(ptr), directory.encode(), rank, size,
                                                 ctypes.byref(options)), f"sovtrain: checkpoints in {directory}")
        self.ptr, self.dir, self.current, self.unreported = ptr, directory, None, None

    def _give_data_key(self, ctx, buf, n):
        if self.data_key is None or n != 1 + len(self.data_key):
            return _lib.ERR_INVALID
        ctypes.memmove(buf, b"\x01" + self.data_key, n)
        return _lib.OK

    def finish_current(self):
        """Waits for the save in flight; its failure, unless its handle's wait() has raised it already."""
        if self.current is not None:
            self.unreported = self.current if self.current._finish() else None
            self.current = None
        return self.unreported._error if self.unreported else None

    def reported(self, handle):
        if self.unreported is handle:
            self.unreported = None

    def close(self):
        if self.ptr:
            _lib.lib.sov_ckpt_writer_close(self.ptr)
            self.ptr = None
        if self.signer:
            _lib.lib.sov_ckpt_signer_free(self.signer)
            self.signer = ctypes.c_void_p()


_writers = {}
_writers_lock = threading.Lock()


@atexit.register
def _close_writers():
    """A save still in flight when the program ends is finished, not lost."""
    with _writers_lock:
        for w in _writers.values():
            w.close()
        _writers.clear()


def _default_threads():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // _ranks.local_ranks()))


def _writer(directory, rank, size, keep, threads, key=None, sign_key=None):
    """The writer for saves to `directory` with these settings: one per process, kept (with its staging memory,
    whose first allocation costs a save more than its copy does) until the program ends or it is dropped."""
    settings = (os.path.realpath(directory), rank, size, keep, threads, key.spec if key else None, sign_key)
    with _writers_lock:
        w = _writers.get(settings)
        if w is None:
            w = _writers[settings] = _Writer(directory, rank, size, keep, threads, key, sign_key)
            w.settings = settings
        return w


def _drop_writer(w):
    """Closes a writer (a save still waiting for its metadata fails) and forgets it."""
    with _writers_lock:
        if _writers.get(getattr(w, "settings", None)) is w:
            del _writers[w.settings]
    w.close()


def _c_tensors(tensors):
    """The sov_ckpt_tensor array for [(name, tensor or Shard)], and the host arrays that must live through the
    save."""
    given = []
    for name, x in tensors:
        dt = _tensors.dtensor_shard(x)
        if dt is None:
            given.append((name, x))
        elif not dt[1]:  # a box that another rank's copy of covers is left to that rank
            given.append((name, dt[0]))
    array = (_lib.Tensor * max(1, len(given)))()
    keep_alive = []
    for i, (name, x) in enumerate(given):
        shard = x if isinstance(x, _tensors.Shard) else None
        sov_dtype, host, widen = _tensors.host(shard.local if shard else x)
        shape = _tensors.shape_of(host)
        if len(shape) > _lib.MAX_DIMS:
            raise ValueError(f"sovtrain: tensor {name!r} has {len(shape)} dimensions; a checkpoint holds at most "
                             f"{_lib.MAX_DIMS}")
        encoded = name.encode()
        keep_alive += [host, encoded]
        t = array[i]
        t.name, t.dtype, t.ndim, t.data = encoded, sov_dtype, len(shape), _tensors.data_ptr(host) or None
        whole, offset = shape, (0,) * len(shape)
        if shard:  # stored as bytes: the last dimension counts bytes
            whole = shard.shape[:-1] + (shard.shape[-1] * widen,) if shard.shape else shard.shape
            offset = shard.offset[:-1] + (shard.offset[-1] * widen,) if shard.offset else shard.offset
            t.sharded = 1
        for d, n in enumerate(shape):
            t.shape[d], t.shard_offset[d], t.shard_shape[d] = whole[d], offset[d], n
    return array, len(given), keep_alive


def save(state, dir, step, *, keep=3, threads=None, blocking=False, comm=None, key_file=None, key_command=None,
         sign_key=None):
    """Saves `state` as checkpoint `step` under `dir` (DIR/step-<step>), on every rank of the job together.

    Returns once this rank's share of the state is copied (the training stall); compression, checksums and writing
    run in C threads without the GIL. The returned SaveHandle's wait() gives the checkpoint's path when it is
    durable; blocking=True waits before returning. Every rank must give the same state. `keep`: checkpoints kept
    once a new one is committed. `threads`: compression threads per rank (default: this host's cores shared by its
    ranks, at most 8). `comm`: the ranks' communicator when torch.distributed is not initialised (an mpi4py
    communicator), or a torch ProcessGroup. key_file / key_command: encrypted; sign_key: signed (see the module's
    help)."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"sovtrain: save: step must be an int >= 0, not {step!r}")
    ranks = _ranks.ranks(comm)
    tree, tensors = _tree.flatten(state)
    meta = json.dumps({META_KEY: {"version": TREE_VERSION, "tree": tree}}, allow_nan=False)
    writer = _writer(dir, ranks.rank, ranks.size, keep, threads or _default_threads(),
                     Key.of(key_file, key_command), sign_key)

    previous = writer.finish_current()
    data_key = secrets.token_hex(32) if ranks.rank == 0 and writer.key else None  # one allgather carries it
    mine = (str(previous) if previous else None, secrets.randbits(63) or 1 if ranks.rank == 0 else None, data_key)
    everyone = ranks.allgather(mine)
    failed = [(r, e) for r, (e, _, _) in enumerate(everyone) if e]
    if failed:
        writer.unreported = None
        raise SovError(_lib.ERR_IO, "sovtrain: save of step %d not started: the previous save failed (%s)" % (
            step, "; ".join(f"rank {r}: {e}" for r, e in failed)))

    writer.data_key = bytes.fromhex(everyone[0][2]) if writer.key else None
    handle = _start(writer, tensors, step, everyone[0][1], meta, dir)
    if blocking:
        handle.wait()
    return handle


def _start(writer, tensors, step, save_id, meta_json, directory, meta_later=False):
    """Starts a save of [(name, tensor or Shard)] on this rank; returns its SaveHandle once the state is copied.
    meta_later: the metadata comes with commit_meta (sov_ckpt_defer_meta)."""
    array, count, keep_alive = _c_tensors(tensors)
    if meta_later:
        _lib.check(_lib.lib.sov_ckpt_defer_meta(writer.ptr), f"sovtrain: save of step {step} in {directory}")
    c_state = _lib.State(step=step, num_tensors=count, tensors=array,
                         meta_json=meta_json.encode() if meta_json else None)
    stall, waited = ctypes.c_double(), ctypes.c_double()
    _lib.check(_lib.lib.sov_ckpt_save(writer.ptr, ctypes.byref(c_state), save_id, ctypes.byref(stall),
                                      ctypes.byref(waited)), f"sovtrain: save of step {step} in {directory}")
    del keep_alive  # copied: the state may change now
    handle = writer.current = SaveHandle(writer, step, stall.value)
    return handle


class Checkpoint:
    """One checkpoint, open for reading: its step, metadata and tensors, read whole or by box. Every chunk read is
    checked against its checksum."""

    def __init__(self, path, key_file=None, key_command=None, key=None, require_signed=None):
        self._ptr = None
        path = _pointer_target(path) if os.path.isfile(path) else path
        if require_signed is not None:
            verify_signature(path, require_signed)
        key = key or Key.of(key_file, key_command)
        ptr = ctypes.c_void_p()
        _lib.check(_lib.lib.sov_ckpt_open_key(os.fsencode(path), key._ptr if key else None, ctypes.byref(ptr)),
                   "sovtrain: open")
        sealed = _lib.lib.sov_ckpt_key_id(ptr)
        self.key_id = sealed.decode() if sealed else None  # the key it was encrypted with, or None
        self._ptr, self.path = ptr, path
        self.step = _lib.lib.sov_ckpt_step(ptr)
        self.world_size = _lib.lib.sov_ckpt_world_size(ptr)
        self.meta = json.loads(_lib.lib.sov_ckpt_meta_json(ptr).decode())
        self.tensors = {}
        for i in range(_lib.lib.sov_ckpt_num_tensors(ptr)):
            info = _lib.TensorInfo()
            _lib.check(_lib.lib.sov_ckpt_tensor_at(ptr, i, ctypes.byref(info)), f"sovtrain: {path}")
            self.tensors[info.name.decode()] = (info.dtype, tuple(info.shape[:info.ndim]))

    def close(self):
        if self._ptr:
            _lib.lib.sov_ckpt_close(self._ptr)
            self._ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def dtype(self, name):
        return _tensors.SOV_DTYPES[self._info(name)[0]]

    def shape(self, name):
        return self._info(name)[1]

    def _info(self, name):
        if name not in self.tensors:
            raise KeyError(f"sovtrain: {self.path} has no tensor {name!r}")
        return self.tensors[name]

    def read(self, name, offset=None, shape=None, out=None, lib=None):
        """Tensor `name`, or its box [offset, offset + shape), into `out` (host memory, contiguous, the stored
        dtype) or a new array: torch's when torch is installed (or lib="torch"), else numpy's."""
        dtype, whole = self._info(name)
        box = tuple(shape) if shape is not None else whole
        dst = out if out is not None else _tensors.empty(lib or _default_lib(), dtype, box)
        if out is not None and not _tensors.readable_in_place(out, dtype, box):
            raise ValueError(f"sovtrain: read of {name!r}: out must be contiguous host memory of "
                             f"{_tensors.SOV_DTYPES[dtype]} and shape {box}")
        self._read_many([(name, dtype, offset, shape, dst)])
        return dst

    def _read_many(self, reads):
        requests = (_lib.ReadRequest * max(1, len(reads)))()
        keep_alive = []
        for i, (name, dtype, offset, shape, dst) in enumerate(reads):
            r = requests[i]
            encoded = name.encode()
            keep_alive.append(encoded)
            r.name, r.dtype, r.dst = encoded, dtype, _tensors.data_ptr(dst) or None
            if offset is not None:
                o = (ctypes.c_int64 * max(1, len(offset)))(*offset)
                s = (ctypes.c_int64 * max(1, len(shape)))(*shape)
                keep_alive += [o, s]
                r.offset, r.shape = o, s
        _lib.check(_lib.lib.sov_ckpt_read_many(self._ptr, requests, len(reads)), f"sovtrain: read {self.path}")

    def load(self, into=None):
        """The whole state: as it was saved from Python, or for a checkpoint written by C ({name: tensor}). With
        `into` (a state of the same structure), its tensors are loaded in place (read straight into them where
        they are contiguous host memory of the same dtype; a Shard gets its own box) and its other values
        replaced. Every tensor is read in one pass (sov_ckpt_read_many)."""
        tree = self._tree()
        targets = {}
        for n, t in (_tree.flatten(into)[1] if into is not None else []):
            dt = _tensors.dtensor_shard(t)
            if dt is not None:
                targets[n] = dt[0]  # its local part: this rank's box
            elif _tensors.is_mutable(t):
                targets[n] = t
        leaves = {leaf["name"]: leaf for leaf in _tree.leaves(tree)}
        reads = [self._plan_read(leaf, targets.get(name)) for name, leaf in leaves.items()]
        self._read_many(reads)
        values = {}
        for name, _, offset, _, dst in reads:
            leaf = leaves[name]
            values[name] = dst if offset is not None else _tensors.restore(dst, leaf["lib"], leaf["dtype"],
                                                                           tuple(leaf["shape"]))
        state = _tree.unflatten(tree, lambda leaf: values[leaf["name"]])
        if into is None:
            return state
        for name, target in targets.items():
            if name in values:
                _copy_into_target(target, values[name], name)
        return _merge(into, state)

    def _tree(self):
        """The state's tree: saved by Python in the metadata, or, for a checkpoint written by C, every tensor by
        its name."""
        if isinstance(self.meta, dict) and isinstance(self.meta.get(META_KEY), dict):
            return self.meta[META_KEY]["tree"]
        lib = _default_lib()
        return {name: {_tree.TAG: "tensor", "name": name, "lib": lib, "dtype": _tensors.SOV_DTYPES[dtype],
                       "shape": list(shape)} for name, (dtype, shape) in self.tensors.items()}

    def _plan_read(self, leaf, target):
        """(name, dtype, offset, shape, dst) for tensor `leaf`: into `target`'s memory when it can be, else into a
        new array. A Shard target of a dtype stored as it is reads its box alone."""
        name = leaf["name"]
        dtype, shape = self._info(name)
        if isinstance(target, _tensors.Shard) and leaf["dtype"] in _tensors.SOV_DTYPES:
            box = _tensors.shape_of(target.local)
            in_place = _tensors.readable_in_place(target.local, dtype, box)
            return name, dtype, target.offset, box, target.local if in_place else _tensors.empty(leaf["lib"], dtype,
                                                                                                 box)
        if not isinstance(target, _tensors.Shard) and target is not None and _tensors.readable_in_place(
                target, dtype, shape):
            return name, dtype, None, None, target
        return name, dtype, None, None, _tensors.empty(leaf["lib"], dtype, shape)

    def verify(self):
        """Reads and checks every chunk of every file; raises SovError naming the first damage."""
        _lib.check(_lib.lib.sov_ckpt_verify(self._ptr), "sovtrain: verify")

    def export_safetensors(self, out_path):
        _lib.check(_lib.lib.sov_ckpt_export_safetensors(self._ptr, os.fsencode(out_path)), "sovtrain: export")


def _default_lib():
    return "torch" if _tensors.torch is not None else "numpy"


def _copy_into_target(target, value, name):
    """A loaded tensor into the `into` tensor or Shard at its place, unless it was read straight into it."""
    if isinstance(target, _tensors.Shard):
        box = _tensors.shape_of(target.local)
        if value is target.local:
            return
        if _tensors.shape_of(value) != box:  # read whole: cut out the box
            value = value[tuple(slice(o, o + n) for o, n in zip(target.offset, box))]
        _tensors.copy_into(target.local, value, name)
    elif value is not target:
        _tensors.copy_into(target, value, name)


def _merge(into, state):
    """`into` updated in place from `state`: tensors are already loaded into it; other values are replaced."""
    if isinstance(into, dict) and isinstance(state, dict):
        for k, v in state.items():
            if k in into and not _tensors.is_mutable(into[k]):
                into[k] = _merge(into[k], v)
            elif k not in into:
                into[k] = v
        return into
    if isinstance(into, list) and isinstance(state, list) and len(into) == len(state):
        for i, v in enumerate(state):
            if not _tensors.is_mutable(into[i]):
                into[i] = _merge(into[i], v)
        return into
    return into if _tensors.is_mutable(into) else state


def _pointer_target(path):
    """The checkpoint that a latest pointer (DIR/latest: "step-N") names."""
    with open(path) as f:
        named = f.read().strip()
    if not named.startswith("step-") or not named[5:].isdigit():
        raise SovError(_lib.ERR_FORMAT, f"sovtrain: {path}: not a checkpoint, nor a latest pointer naming one "
                                        '("step-N")')
    return os.path.join(os.path.dirname(path), named)


def resolve(path_or_dir):
    """The checkpoints that `path_or_dir` names, in the order to try them: itself when it is one, the one a latest
    pointer names, else those of a checkpoint directory (DIR/latest first, then newest first)."""
    if os.path.isfile(path_or_dir):
        return [_pointer_target(path_or_dir)]
    return [path_or_dir] if _is_checkpoint(path_or_dir) else _candidates(path_or_dir)


def _candidates(directory):
    """Checkpoints under a run's checkpoint directory, the one DIR/latest names first, then newest first."""
    found = []
    try:
        with open(os.path.join(directory, "latest")) as f:  # "step-N": written last by each commit
            named = f.read().strip()
        if named.startswith("step-") and "/" not in named:
            found.append(os.path.realpath(os.path.join(directory, named)))
    except OSError:
        pass
    steps = (ctypes.c_long * 4096)()
    n = _lib.lib.sov_ckpt_list_steps(os.fsencode(directory), steps, len(steps))
    for i in range(max(0, n)):
        path = os.path.realpath(os.path.join(directory, f"step-{steps[i]}"))
        if path not in found:
            found.append(path)
    return found


def _is_checkpoint(path):
    return os.path.isfile(os.path.join(path, "manifest.json"))


def load(path_or_dir, into=None, *, key_file=None, key_command=None, require_signed=None):
    """The state of checkpoint `path_or_dir` (DIR/step-N, or DIR/latest: the one it names), or of the newest
    checkpoint under a checkpoint directory that loads whole (a damaged one is skipped, saying why on stderr). `into`: see Checkpoint.load."""
    key = Key.of(key_file, key_command)
    if _is_checkpoint(path_or_dir) or os.path.isfile(path_or_dir):
        with Checkpoint(path_or_dir, key=key, require_signed=require_signed) as c:
            return c.load(into)
    candidates = _candidates(path_or_dir)
    if not candidates:
        raise SovError(_lib.ERR_IO, f"sovtrain: load: no checkpoint in {path_or_dir}")
    for path in candidates:
        try:
            with Checkpoint(path, key=key, require_signed=require_signed) as c:
                return c.load(into)
        except SovError as e:
            last = e
            print(f"sovtrain: skipping checkpoint {path}: {e}", file=sys.stderr)
    raise SovError(_lib.ERR_IO, f"sovtrain: load: no checkpoint in {path_or_dir} loads (the last: {last})")


def latest(dir):
    """The path of the newest checkpoint under `dir` that opens and verifies (every chunk read and checked), or
    None when there is none."""
    path = ctypes.create_string_buffer(4200)
    status = _lib.lib.sov_ckpt_find(os.fsencode(dir), path, len(path), None, None)
    if status != _lib.OK:
        message = _lib.lib.sov_last_error().decode(errors="replace")
        if "no checkpoint" in message:
            return None
        raise SovError(status, f"sovtrain: latest: {message}")
    return path.value.decode()


def verify(path, *, key_file=None, key_command=None, require_signed=None):
    """Checks every chunk of checkpoint `path` against its checksums (of an encrypted one without its key: the
    stored bytes only), and with require_signed its signature. Raises SovError naming the first damage."""
    with Checkpoint(path, key_file, key_command, require_signed=require_signed) as c:
        c.verify()


def verify_signature(path, public_key):
    """Checks checkpoint `path`'s model.sig with the ECDSA public key in PEM file `public_key`, and every file
    against it; raises SovError naming the file that does not match (or saying it is not signed)."""
    path = _pointer_target(path) if os.path.isfile(path) else path
    _lib.check(_lib.lib.sov_ckpt_verify_signature(os.fsencode(path), os.fsencode(public_key)), "sovtrain")
