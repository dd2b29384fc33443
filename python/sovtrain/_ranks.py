"""Who this process is among the job's ranks, and the one collective that a save needs from them.

Before each save every rank waits for its previous one, and then the ranks exchange one small value each: whether
that previous save failed, and from rank 0 the new save's id. This is the synchronisation that the C API asks for
between saves (rank 0's commit removes a failed attempt's leftovers, so no rank may start the next save before it).
The exchange runs over torch.distributed when it is initialised, over an mpi4py-style communicator when one is
given, and is nothing at all for a single rank."""


from . import _lib


class Single:
    rank, size = 0, 1

    def allgather(self, value):
        return [value]


class TorchDistributed:
    def __init__(self, group=None):
        import torch.distributed as dist
        self.dist, self.group = dist, group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    def allgather(self, value):
        out = [None] * self.size
        self.dist.all_gather_object(out, value, group=self.group)
        return out


class Mpi4py:
    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def allgather(self, value):
        return self.comm.allgather(value)


def ranks(comm=None):
    """The ranks of the job this process saves with: `comm` (an mpi4py communicator, or a torch ProcessGroup),
    else torch.distributed's default group when it is initialised, else a single rank, which must be what the
    environment says too."""
    if comm is not None:
        return Mpi4py(comm) if hasattr(comm, "allgather") and hasattr(comm, "Get_rank") else TorchDistributed(comm)
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return TorchDistributed()
    except ImportError:
        pass
    world = _lib.world_from_env()
    rank, size = world.rank, world.size
    if size > 1:
        raise RuntimeError(f"sovtrain: this is rank {rank} of {size} (from the environment), but torch.distributed "
                           "is not initialised and no comm= was given: the ranks of a checkpoint agree on each save "
                           "through one of them. Call torch.distributed.init_process_group() first, or pass "
                           "comm=MPI.COMM_WORLD (mpi4py).")
    return Single()


def local_ranks():
    """How many ranks of the job share this host, as libsovtrain reads the launchers' variables."""
    return max(1, _lib.world_from_env().local_size)
