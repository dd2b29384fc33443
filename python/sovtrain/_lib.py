"""libsovtrain through ctypes: finding the library, its structures, and its errors as exceptions.

ctypes releases the GIL for the length of every call into the library, so a save's copy, and the waits for its
writer threads, let the other Python threads run."""

import ctypes
import os
import subprocess

MAX_DIMS = 8

# sov_status (sov.h)
OK = 0
_STATUS_NAMES = ["SOV_OK", "SOV_ERR_INVALID", "SOV_ERR_IO", "SOV_ERR_FORMAT", "SOV_ERR_NOMEM", "SOV_ERR_COMM",
                 "SOV_ERR_UNSUPPORTED", "SOV_ERR_INTERNAL"]
ERR_INVALID, ERR_IO, ERR_FORMAT = 1, 2, 3


class SovError(RuntimeError):
    """A failure inside libsovtrain: `status` is its sov_status name, the message says what failed and where."""

    def __init__(self, status, message):
        self.status = _STATUS_NAMES[status] if 0 <= status < len(_STATUS_NAMES) else str(status)
        super().__init__(message)


class Tensor(ctypes.Structure):  # sov_ckpt_tensor
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_DIMS), ("data", ctypes.c_void_p), ("sharded", ctypes.c_int),
                ("shard_offset", ctypes.c_int64 * MAX_DIMS), ("shard_shape", ctypes.c_int64 * MAX_DIMS)]


class State(ctypes.Structure):  # sov_ckpt_state
    _fields_ = [("step", ctypes.c_long), ("num_tensors", ctypes.c_int), ("tensors", ctypes.POINTER(Tensor)),
                ("meta_json", ctypes.c_char_p)]


class Options(ctypes.Structure):  # sov_ckpt_options
    _fields_ = [("keep", ctypes.c_int), ("threads", ctypes.c_int), ("chunk_bytes", ctypes.c_size_t),
                ("commit_timeout_s", ctypes.c_double), ("copy_to_host", ctypes.c_void_p),
                ("alloc_host", ctypes.c_void_p), ("free_host", ctypes.c_void_p), ("memory_ctx", ctypes.c_void_p),
                ("key", ctypes.c_void_p), ("share_key", ctypes.c_void_p), ("share_ctx", ctypes.c_void_p),
                ("sign", ctypes.c_int), ("signer", ctypes.c_void_p)]


class TensorInfo(ctypes.Structure):  # sov_ckpt_tensor_info
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_DIMS), ("num_shards", ctypes.c_int)]


class ReadRequest(ctypes.Structure):  # sov_ckpt_read_request
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("offset", ctypes.POINTER(ctypes.c_int64)),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("dst", ctypes.c_void_p)]


class World(ctypes.Structure):  # sov_world
    _fields_ = [("rank", ctypes.c_int), ("size", ctypes.c_int), ("local_rank", ctypes.c_int),
                ("local_size", ctypes.c_int), ("source", ctypes.c_char_p)]


_P = ctypes.c_void_p
_S = ctypes.c_int  # sov_status
_PROTOTYPES = {
    "sov_version": (ctypes.c_char_p, []),
    "sov_last_error": (ctypes.c_char_p, []),
    "sov_world_from_env": (_S, [ctypes.POINTER(World)]),
    "sov_ckpt_writer_open": (_S, [ctypes.POINTER(_P), ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                  ctypes.POINTER(Options)]),
    "sov_ckpt_writer_reserve": (_S, [_P, ctypes.POINTER(State)]),
    "sov_ckpt_save": (_S, [_P, ctypes.POINTER(State), ctypes.c_uint64, ctypes.POINTER(ctypes.c_double),
                           ctypes.POINTER(ctypes.c_double)]),
    "sov_ckpt_wait": (_S, [_P, ctypes.c_char_p, ctypes.c_size_t]),
    "sov_ckpt_save_seconds": (ctypes.c_double, [_P]),
    "sov_ckpt_writer_close": (None, [_P]),
    "sov_ckpt_defer_meta": (_S, [_P]),
    "sov_ckpt_commit_meta": (_S, [_P, ctypes.c_char_p]),
    "sov_ckpt_open": (_S, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "sov_ckpt_close": (None, [_P]),
    "sov_ckpt_step": (ctypes.c_long, [_P]),
    "sov_ckpt_world_size": (ctypes.c_int, [_P]),
    "sov_ckpt_meta_json": (ctypes.c_char_p, [_P]),
    "sov_ckpt_num_tensors": (ctypes.c_int, [_P]),
    "sov_ckpt_tensor_at": (_S, [_P, ctypes.c_int, ctypes.POINTER(TensorInfo)]),
    "sov_ckpt_tensor_find": (_S, [_P, ctypes.c_char_p, ctypes.POINTER(TensorInfo)]),
    "sov_ckpt_read_many": (_S, [_P, ctypes.POINTER(ReadRequest), ctypes.c_int]),
    "sov_ckpt_verify": (_S, [_P]),
    "sov_ckpt_find": (_S, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, _P, _P]),
    "sov_ckpt_list_steps": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_long), ctypes.c_int]),
    "sov_ckpt_export_safetensors": (_S, [_P, ctypes.c_char_p]),
    "sov_ckpt_key_from_file": (_S, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "sov_ckpt_key_from_command": (_S, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "sov_ckpt_key_free": (None, [_P]),
    "sov_ckpt_key_describe": (ctypes.c_char_p, [_P]),
    "sov_ckpt_open_key": (_S, [ctypes.c_char_p, _P, ctypes.POINTER(_P)]),
    "sov_ckpt_key_id": (ctypes.c_char_p, [_P]),
    "sov_ckpt_signer_from_pem": (_S, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "sov_ckpt_signer_free": (None, [_P]),
    "sov_ckpt_verify_signature": (_S, [ctypes.c_char_p, ctypes.c_char_p]),
}

# sov_ckpt_options.share_key: sov_status (*)(void *ctx, void *bytes, size_t n)
SHARE_KEY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

SONAME = "libsovtrain.so.0"


def _candidates():
    """Where libsovtrain may be, in the order tried: $SOVTRAIN_LIB, the dynamic loader's own search
    (LD_LIBRARY_PATH, the ld.so cache), then pkg-config's libdir for sovtrain."""
    env = os.environ.get("SOVTRAIN_LIB")
    if env:
        return [env]  # told exactly where: nothing else is tried
    found = [SONAME]
    try:
        libdir = subprocess.run(["pkg-config", "--variable=libdir", "sovtrain"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if libdir:
            found.append(os.path.join(libdir, SONAME))
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def _torch_first():
    """Imports torch, where it is installed, before libsovtrain. The library links the system's CUDA runtime and
    NCCL, of the same sonames as the ones a PyTorch wheel bundles; the first loaded serves both, and torch needs
    the versions it was built with (an older system NCCL lacks its symbols), while libsovtrain needs only their
    stable ABI."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


def _load():
    _torch_first()
    tried = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as e:
            tried.append(f"{path}: {e}")
    else:
        raise ImportError("sovtrain: cannot load libsovtrain (" + "; ".join(tried) + "). Install sovtrain "
                          "(cmake --install build --prefix PREFIX) and put PREFIX/lib on LD_LIBRARY_PATH or "
                          "PKG_CONFIG_PATH, or set SOVTRAIN_LIB to the library's path.")
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


def check(status, what=""):
    """Raises SovError with the library's message for the failed call (its last error on this thread)."""
    if status != OK:
        message = lib.sov_last_error().decode(errors="replace") or _STATUS_NAMES[status]
        raise SovError(status, f"{what}: {message}" if what else message)


def version():
    return lib.sov_version().decode()


def world_from_env():
    """This process's sov_world (rank, size, local_rank, local_size) from Open MPI's or torchrun's variables, as
    libsovtrain reads them."""
    w = World()
    check(lib.sov_world_from_env(ctypes.byref(w)), "sovtrain: the rank's identity from the environment")
    return w
