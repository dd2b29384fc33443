"""dtensor_check: DTensors through sovtrain.checkpoint, one rank of a real job (gloo, a CPU device mesh).

    dtensor_check.py save DIR    every rank saves DTensors sharded by rows, by columns, and replicated
    dtensor_check.py load PATH   loads them whole, and into DTensors of this job's mesh laid out another way

A DTensor's local part is the rank's box of a sharded tensor (a replicated one is saved by one rank), so the
checkpoint loads at any world size and into any layout."""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

import sovtrain.checkpoint as ckpt

FULL = {"rows": (10, 6), "cols": (5, 9), "repl": (4,)}


def full(name):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randn(FULL[name], generator=g)


def main():
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rank = dist.get_rank()
    if sys.argv[1] == "save":
        state = {"rows": distribute_tensor(full("rows"), mesh, [Shard(0)]),
                 "cols": distribute_tensor(full("cols"), mesh, [Shard(1)]),
                 "repl": distribute_tensor(full("repl"), mesh, [Replicate()]), "epoch": 4}
        ckpt.save(state, sys.argv[2], 1, blocking=True)
        print(f"rank {rank}: saved")
        return
    whole = ckpt.load(sys.argv[2])
    for name in FULL:
        if not torch.equal(whole[name], full(name)):
            sys.exit(f"dtensor_check: {name} loaded whole differs")
    into = {"rows": distribute_tensor(torch.zeros(FULL["rows"]), mesh, [Shard(1)]),  # another layout
            "cols": distribute_tensor(torch.zeros(FULL["cols"]), mesh, [Shard(0)]),
            "repl": distribute_tensor(torch.zeros(FULL["repl"]), mesh, [Replicate()]), "epoch": 0}
    ckpt.load(sys.argv[2], into=into)
    for name in FULL:
        if not torch.equal(into[name].full_tensor(), full(name)):
            sys.exit(f"dtensor_check: {name} loaded into a DTensor differs")
    if into["epoch"] != 4:
        sys.exit(f"dtensor_check: epoch {into['epoch']}")
    print(f"rank {rank} of {dist.get_world_size()}: DTensors equal, whole and resharded")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
