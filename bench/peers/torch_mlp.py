#!/usr/bin/python3
"""bench/peers/torch_mlp: PyTorch DDP peer for bench/train.py.

Measures the training throughput (samples/s) of PyTorch DistributedDataParallel (N processes on localhost, 1
intra-op thread each; --device cpu: gloo backend; --device cuda: NCCL, rank r on cuda:r, the training set copied
to the GPU once and every batch gathered there) on the same job as sovtrain's benchmark: MLP 784-H1-H2-10
(Linear + ReLU), softmax cross-entropy, AdamW lr 1e-3 (weight decay 0.01 on weight matrices only), Fashion-MNIST
IDX files, batch-per-rank samples per rank per step, each rank taking its contiguous share of every global batch
from one seeded permutation per epoch. samples/s = global samples / time over the steps after the first 5
(warm-up), the clock started and stopped after a barrier (and on a GPU torch.cuda.synchronize()). Prints one JSON
line on stdout: {"bench":"train","impl":"torch","ranks":N,"device":D,"batch_per_rank":B,"samples_per_s":X,
"torch":"<version>","threads_per_rank":1}. Errors go to stderr with exit 1; exit 77 when torch cannot be
imported."""
import argparse
import gzip
import json
import os
import sys
import time

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"torch_mlp: PyTorch is not importable ({e}); apt-get install python3-torch, run with /usr/bin/python3",
          file=sys.stderr)
    sys.exit(77)

from spawn_ranks import spawn_ranks  # noqa: E402  (bench/peers, beside this script)

WARMUP = 5


def load_idx(path, magic, dims):
    """The IDX file at path (gzip or raw) as a numpy uint8 array of the given number of dimensions."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: {e}") from None
    head = 4 + 4 * dims
    if len(raw) < head or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path}: not an IDX file with magic 0x{magic:08x}")
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    if len(raw) != head + int(np.prod(shape)):
        raise ValueError(f"{path}: {len(raw) - head} data bytes, the header says {int(np.prod(shape))}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(shape)


def find(data, stem):
    for name in (f"{stem}.gz", stem):
        if os.path.exists(os.path.join(data, name)):
            return os.path.join(data, name)
    raise FileNotFoundError(f"{data}: no {stem}[.gz]")


def worker(rank, args, port, result):
    import torch.distributed as dist
    from torch import nn
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")  # one host: rank = LOCAL_RANK
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.ranks)

    def settle():
        """Every rank at this point, and on a GPU every kernel queued before it finished."""
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()

    images = load_idx(find(args.data, "train-images-idx3-ubyte"), 0x803, 3)
    labels = load_idx(find(args.data, "train-labels-idx1-ubyte"), 0x801, 1)
    x = ((torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)) / 255 - 0.2860) / 0.3530).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    torch.manual_seed(args.seed)
    widths = [784] + [int(h) for h in args.hidden.split(",")] + [10]
    layers = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    model = nn.parallel.DistributedDataParallel(nn.Sequential(*layers[:-1]).to(device),
                                                device_ids=[rank] if cuda else None)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1], "weight_decay": 0.01},
                             {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    b, g = args.batch_per_rank, args.batch_per_rank * args.ranks
    per_epoch = len(x) // g
    if per_epoch == 0:
        raise ValueError(f"global batch {g} exceeds the {len(x)} training samples")
    perm = None
    for step in range(args.steps):
        if step == WARMUP:
            settle()
            t0 = time.perf_counter()
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + epoch)).to(device)
        idx = perm[k * g + rank * b:k * g + (rank + 1) * b]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    settle()
    seconds = time.perf_counter() - t0
    if rank == 0:
        result.put((args.steps - WARMUP) * g / seconds)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--hidden", default="1024,1024", help="MLP hidden widths (default 1024,1024)")
    p.add_argument("--batch-per-rank", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: rank r on cuda:r (default cpu)")
    args = p.parse_args()
    if args.ranks < 1 or args.batch_per_rank < 1 or args.steps <= WARMUP:
        sys.exit(f"torch_mlp: need --ranks >= 1, --batch-per-rank >= 1, --steps > {WARMUP}")
    if args.device == "cuda" and args.ranks > torch.cuda.device_count():
        sys.exit(f"torch_mlp: --device cuda needs a GPU per rank: {args.ranks} ranks, "
                 f"{torch.cuda.device_count()} GPUs usable (torch.cuda.is_available() {torch.cuda.is_available()})")
    try:
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            find(args.data, stem)
        sps = spawn_ranks(worker, args, args.ranks)
    except Exception as e:
        print(f"torch_mlp: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"bench": "train", "impl": "torch", "ranks": args.ranks, "device": args.device,
                      "batch_per_rank": args.batch_per_rank, "samples_per_s": round(sps, 1),
                      "torch": torch.__version__, "threads_per_rank": 1}))


if __name__ == "__main__":
    main()
