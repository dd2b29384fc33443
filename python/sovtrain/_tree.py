"""A training state (nested dicts, lists and tuples of tensors, arrays and plain values) as named tensors plus a
JSON tree, and back. Nothing is pickled: a value JSON cannot hold as it is becomes a tagged object,
{"__sov__": TAG, ...}, and a type that has no faithful JSON form is refused, naming where it is in the state.

  tensor  {"__sov__": "tensor", "name": N, "lib": "torch"|"numpy"|"numpy-scalar", "dtype": D, "shape": [...]}
          where N names the tensor in the checkpoint: the path of keys joined by ".", as torch's state_dict does
  tuple   {"__sov__": "tuple", "items": [...]}
  dict    {"__sov__": "dict", "items": [[key, value], ...]}  keys that are not all strings, or that hold "__sov__"
  bytes   {"__sov__": "bytes", "base64": "..."}
  float   {"__sov__": "float", "value": "nan" | "inf" | "-inf"}
  int     {"__sov__": "int", "value": "123..."}  beyond 64 bits
"""

import base64
import hashlib
import math

from . import _tensors

TAG = "__sov__"
MAX_NAME = 255  # SOV_CKPT_MAX_NAME
_INT64 = 1 << 63


def _key_text(key):
    return key if isinstance(key, str) else repr(key)


class _Names:
    """Unique tensor names from paths: a path that collides with an earlier one, or is too long, gets a suffix."""

    def __init__(self):
        self.used = set()

    def make(self, path):
        name = ".".join(_key_text(k) for k in path) or "tensor"
        if len(name.encode()) > MAX_NAME or name in self.used:
            digest = hashlib.sha256(repr(path).encode()).hexdigest()[:12]
            name = name.encode()[:MAX_NAME - 13].decode(errors="ignore") + "~" + digest
        n = 2
        base = name
        while name in self.used:
            name = f"{base}~{n}"
            n += 1
        self.used.add(name)
        return name


def flatten(state):
    """(tree, tensors): the JSON tree of `state`, and [(name, tensor)] for its tensors in the order met."""
    names = _Names()
    tensors = []

    def walk(x, path):
        if _tensors.is_tensor(x):
            name = names.make(path)
            tensors.append((name, x))
            return {TAG: "tensor", "name": name, "lib": _tensors.lib_of(x), "dtype": _tensors.dtype_name(x),
                    "shape": list(_tensors.shape_of(x))}
        if x is None or isinstance(x, (bool, str)):
            if isinstance(x, str) and "\0" in x:
                raise ValueError(f"sovtrain: the state's string at {_where(path)} holds a NUL character, which "
                                 "checkpoint metadata cannot: store it as bytes")
            return x
        if isinstance(x, int):
            return x if -_INT64 <= x < _INT64 else {TAG: "int", "value": str(x)}
        if isinstance(x, float):
            return x if math.isfinite(x) else {TAG: "float", "value": repr(x)}
        if isinstance(x, (bytes, bytearray)):
            return {TAG: "bytes", "base64": base64.b64encode(bytes(x)).decode()}
        if isinstance(x, list):
            return [walk(v, path + [i]) for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return {TAG: "tuple", "items": [walk(v, path + [i]) for i, v in enumerate(x)]}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and TAG not in x:
                return {k: walk(v, path + [k]) for k, v in x.items()}
            return {TAG: "dict", "items": [[walk(k, path + ["key"]), walk(v, path + [k])] for k, v in x.items()]}
        raise TypeError(f"sovtrain: the state's value at {_where(path)} is a {type(x).__module__}.{type(x).__name__}, "
                        "which a checkpoint cannot hold without pickling it: give tensors, arrays, numbers, strings, "
                        "bytes, None, or dicts, lists and tuples of them")

    return walk(state, []), tensors


def _where(path):
    return "state" + "".join(f"[{k!r}]" for k in path)


def unflatten(tree, tensor):
    """The state that `tree` describes; tensor(node) gives each tensor leaf's value."""
    if isinstance(tree, list):
        return [unflatten(v, tensor) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tag = tree.get(TAG)
    if tag is None:
        return {k: unflatten(v, tensor) for k, v in tree.items()}
    if tag == "tensor":
        return tensor(tree)
    if tag == "tuple":
        return tuple(unflatten(v, tensor) for v in tree["items"])
    if tag == "dict":
        return {_hashable(unflatten(k, tensor)): unflatten(v, tensor) for k, v in tree["items"]}
    if tag == "bytes":
        return base64.b64decode(tree["base64"])
    if tag == "float":
        return float(tree["value"])
    if tag == "int":
        return int(tree["value"])
    raise ValueError(f"sovtrain: the checkpoint's state tree has an unknown tag {tag!r} (written by a newer "
                     "sovtrain?)")


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def leaves(tree):
    """Every tensor leaf of `tree`, in order."""
    if isinstance(tree, list):
        for v in tree:
            yield from leaves(v)
    elif isinstance(tree, dict):
        tag = tree.get(TAG)
        if tag == "tensor":
            yield tree
        elif tag in ("tuple", "dict"):
            for item in tree["items"]:
                yield from leaves(item)
        elif tag is None:
            for v in tree.values():
                yield from leaves(v)
