"""sovtrain for Python: the checkpoints of libsovtrain for any training state (sovtrain.checkpoint), a
checkpointer for PyTorch training loops (sovtrain.torch), and a storage backend for torch's Distributed
Checkpoint (sovtrain.dcp). numpy is the one requirement; torch is used where it is installed.

The package binds libsovtrain (the C library) through ctypes: it finds it through $SOVTRAIN_LIB, the dynamic
loader's search path, or pkg-config."""

from ._lib import SovError, version as library_version  # noqa: F401
from . import checkpoint  # noqa: F401

__version__ = "0.1.0"
