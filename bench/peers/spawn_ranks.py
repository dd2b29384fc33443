"""bench/peers/spawn_ranks: starts a PyTorch peer's worker on N local ranks.

worker(rank, args, port, result) runs in N processes (torch.multiprocessing, "spawn"), with a free localhost port
for the gloo or NCCL rendezvous (MASTER_PORT), gloo on the loopback device and one OpenMP thread per rank; rank 0
puts its figures in `result`, which spawn_ranks returns."""
import os
import socket


def spawn_ranks(worker, args, nranks):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ["OMP_NUM_THREADS"] = "1"
    result = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(args, port, result), nprocs=nranks)
    return result.get()
