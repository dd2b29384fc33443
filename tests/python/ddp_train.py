"""ddp_train: a real PyTorch DDP job (gloo) checkpointed by sovtrain.torch.Checkpointer: an MLP with dropout on
Fashion-MNIST, AdamW and a cosine LR schedule. Under `sovtrain launch -np N --max-restarts K` a killed rank costs
only the steps since the last checkpoint, and the final weights are those of an uninterrupted run, bit for bit.

    sovtrain launch -np 2 --max-restarts 2 -- python ddp_train.py --run-dir runs/torch --steps 2000

--final FILE: rank 0 writes the final weights there (each tensor's bytes, in state_dict order).
--pause-at STEP (for tests): on the first attempt, after the checkpoint at STEP every rank writes its pid to
RUN/paused-rank-R and waits there until it is killed or asked to stop."""

import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import sovtrain.torch


def fashion_mnist(directory, count):
    with gzip.open(os.path.join(directory, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:count]
    with gzip.open(os.path.join(directory, "train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


def batch_indices(step, batch, rank, world, n, seed):
    """This rank's samples of global batch `step`: a fresh permutation each epoch, a pure function of the step."""
    per_epoch = n // (batch * world)
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    start = (i * world + rank) * batch
    return torch.from_numpy(order[start:start + batch]), {"epoch": epoch, "batch": i}


def pause(run_dir, rank, ck):
    """The test's moment to kill or signal the job: the checkpoint is durable, the ranks wait here."""
    with open(os.path.join(run_dir, f"paused-rank-{rank}.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(run_dir, f"paused-rank-{rank}.tmp"), os.path.join(run_dir, f"paused-rank-{rank}"))
    while not ck.stop_requested:
        time.sleep(0.05)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    p.add_argument("--every", type=int, default=200, help="checkpoint every this many steps")
    p.add_argument("--samples", type=int, default=12000)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stop-exit-code", type=int, default=0)
    p.add_argument("--final")
    p.add_argument("--pause-at", type=int)
    a = p.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(a.seed + rank)  # dropout differs per rank: the checkpoint must restore each rank's RNG
    x, y = fashion_mnist(a.data, a.samples)

    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.steps)
    ck = sovtrain.torch.Checkpointer(os.path.join(a.run_dir, "checkpoints"), model, opt, sched, every=a.every,
                                     stop_exit_code=a.stop_exit_code)
    step = ck.resume()
    if step and ck.data != batch_indices(step, a.batch, rank, world, a.samples, a.seed)[1]:
        raise SystemExit(f"ddp_train: the checkpoint's data position {ck.data} is not step {step}'s")

    first_attempt = os.environ.get("SOVTRAIN_RESTART_COUNT", "0") == "0"
    while step < a.steps:
        idx, _ = batch_indices(step, a.batch, rank, world, a.samples, a.seed)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if rank == 0 and step % 500 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
        ck.step(step, data=batch_indices(step, a.batch, rank, world, a.samples, a.seed)[1])
        if step == a.pause_at and first_attempt:
            ck.close()
            pause(a.run_dir, rank, ck)
    ck.close()
    if rank == 0 and a.final:
        with open(a.final + ".tmp", "wb") as f:
            for t in model.module.state_dict().values():
                f.write(t.contiguous().numpy().tobytes())
        os.rename(a.final + ".tmp", a.final)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
