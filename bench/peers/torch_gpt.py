#!/usr/bin/python3
"""bench/peers/torch_gpt: PyTorch (DDP) peer for the GPT part of bench/train.py.

Trains the same job as `sovtrain train --model gpt`: a GPT-2-style byte-level language model (vocabulary 256,
learned position embedding, pre-LayerNorm blocks with eps 1e-5, causal multi-head attention with a fused c_attn
[3C, C] and c_proj, a 4C tanh-GELU MLP, final ln_f, logits tied to wte; init N(0, 0.02), the residual projections
N(0, 0.02/sqrt(2L)), biases 0), mean softmax cross-entropy over every position, AdamW (betas 0.9/0.999, eps 1e-8,
weight decay on the 2-D tensors only, wte and wpe included, as runtime/optim.c does), no gradient clipping, LR
linear warmup over --warmup-steps then cosine decay to lr * --min-lr-ratio at --steps (runtime/optim.c's
sov_lr_at). 1 intra-op thread per rank; 1 rank is a plain model, N ranks DistributedDataParallel over gloo on
localhost, each rank --batch-per-rank sequences per step.

Data, as sovtrain reads it: --data is a file or a directory; a directory contributes its files named *.u8
(following symlinks) or, when it has none, all its regular files (names starting with '.' left out), concatenated
in sorted() (byte) order of their names, as runtime/text.c does. train = bytes[:len // 20 * 19] (95 %), val = the
rest. Training windows start uniformly in [0, len(train) - T - 1] (each rank its own seeded stream); validation is every window i of nwin = (len(val) - 1) // T, inputs
val[iT : iT+T], targets shifted by one, val_loss = mean cross-entropy (nats per byte) over all nwin * T positions.

Modes: --steps N alone trains N steps; with --seconds S it trains until S seconds of training-step time have
passed after the warm-up steps (the clock of sovtrain's train_s; it stops at the step boundary nearest S) or N
steps are done, whichever comes first, the LR schedule still spanning N steps. tokens/s = global tokens / time over the steps after the first 5 (warm-up),
the clock started and stopped after a barrier. Then val_loss over the whole validation set (ranks share the
windows). Prints one JSON line on stdout:
{"bench":"train","model":"gpt","impl":"torch","ranks":R,"tokens_per_s":X,"val_loss":Y,"steps":N,"train_s":S,...}.
Errors go to stderr with exit 1; exit 77 when torch cannot be imported."""
import argparse
import json
import math
import os
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"torch_gpt: PyTorch is not importable ({e}); apt-get install python3-torch, run with /usr/bin/python3",
          file=sys.stderr)
    sys.exit(77)

from spawn_ranks import spawn_ranks  # noqa: E402  (bench/peers, beside this script)

WARMUP = 5           # untimed steps, as sovtrain's UNTIMED_STEPS
VOCAB = 256          # bytes
EVAL_BATCH = 32      # validation windows per forward


def corpus_files(path):
    """The files whose concatenation is the corpus, in order (runtime/text.c's list_dir): a directory's entries not
    starting with '.' that are regular files after following symlinks; only the *.u8 ones when there are any."""
    if not os.path.isdir(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))
    u8 = [n for n in names if n.endswith(".u8")]
    return [os.path.join(path, n) for n in (u8 or names)]


def load_corpus(path, context):
    """(train, val) as uint8 torch tensors."""
    files = corpus_files(path)
    if not files:
        raise ValueError(f"{path}: no files")
    raw = b"".join(open(f, "rb").read() for f in files)
    cut = len(raw) // 20 * 19  # runtime/text.c's train_len (floor(0.95 len) can be a few bytes more)
    data = torch.from_numpy(np.frombuffer(raw, np.uint8).copy())
    train, val = data[:cut], data[cut:]
    if len(train) < context + 1 or len(val) < context + 1:
        raise ValueError(f"{path}: {len(raw)} bytes is too little for context {context} "
                         f"(train {len(train)}, validation {len(val)} bytes)")
    return train, val


class Block(nn.Module):
    def __init__(self, C, NH, T):
        super().__init__()
        self.C, self.NH = C, NH
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)
        self.mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # not a buffer: DDP cannot broadcast bool over gloo

    def attn(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, hs).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.attn_proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, C, NH, L):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, NH, T) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.pos = torch.arange(T)
        with torch.no_grad():  # GPT-2's initialisation, as runtime/gpt.c's gpt_init
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith(("attn_proj.weight", "mlp_proj.weight")) else 0.02
                    p.normal_(0.0, std)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)  # LayerNorm weights

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(self.pos[:T])
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied output embedding

    def by_name(self):
        """The parameters under runtime/gpt.c's (HF GPT-2) tensor names, as its safetensors export has them."""
        out = {"wte.weight": self.wte.weight, "wpe.weight": self.wpe.weight,
               "ln_f.weight": self.ln_f.weight, "ln_f.bias": self.ln_f.bias}
        for l, b in enumerate(self.h):
            for ours, mod in (("ln_1", b.ln_1), ("ln_2", b.ln_2), ("attn.c_attn", b.c_attn),
                              ("attn.c_proj", b.attn_proj), ("mlp.c_fc", b.c_fc), ("mlp.c_proj", b.mlp_proj)):
                out[f"h.{l}.{ours}.weight"] = mod.weight
                out[f"h.{l}.{ours}.bias"] = mod.bias
        return out


def lr_at(args, step):
    """runtime/optim.c's sov_lr_at (warmup clamped to the total steps, as sovtrain's plan_steps does)."""
    warmup = min(args.warmup_steps, args.steps)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    span = args.steps - warmup
    progress = min((step - warmup) / span, 1.0) if span > 0 else 1.0
    lo = args.lr * args.min_lr_ratio
    return lo + (args.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate(model, val, T, rank, ranks):
    """(val_loss, val_acc) over every validation window; the ranks take windows rank, rank + ranks, ..."""
    nwin = (len(val) - 1) // T
    mine = list(range(rank, nwin, ranks))
    loss_sum, correct = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), EVAL_BATCH):
            starts = torch.tensor(mine[i:i + EVAL_BATCH]) * T
            idx = starts[:, None] + torch.arange(T + 1)
            chunk = val[idx].long()
            logits = model(chunk[:, :-1]).reshape(-1, VOCAB)
            y = chunk[:, 1:].reshape(-1)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().item()
            correct += (logits.argmax(dim=1) == y).sum().item()
    model.train()
    totals = torch.tensor([loss_sum, float(correct)], dtype=torch.float64)
    if ranks > 1:
        import torch.distributed as dist
        dist.all_reduce(totals)
    n = nwin * T
    return totals[0].item() / n, totals[1].item() / n


def worker(rank, args, port, result):
    torch.set_num_threads(1)
    ranks = args.ranks
    if ranks > 1:
        import torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
        barrier = dist.barrier
    else:
        def barrier():
            pass
    T, B = args.context, args.batch_per_rank
    train, val = load_corpus(args.data, T)
    torch.manual_seed(args.seed)
    model = GPT(VOCAB, T, args.width, args.heads, args.layers)
    if ranks > 1:
        model = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's parameters
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() == 2], "weight_decay": args.weight_decay},
                             {"params": [p for p in params if p.dim() != 2], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + rank)
    offsets = torch.arange(T + 1)
    high = len(train) - T  # starts in [0, len(train) - T - 1]
    stop = torch.zeros(1)
    t0 = train_start = time.perf_counter()
    steps = 0
    for step in range(args.steps):
        if step == WARMUP:
            barrier()
            t0 = time.perf_counter()
        if args.seconds is not None and step > WARMUP:
            # Stop where the budget is nearest a step boundary (the next step would overrun it by more than half
            # a step); every rank must stop at the same step, so rank 0's clock decides.
            elapsed = time.perf_counter() - t0
            stop.fill_(1.0 if elapsed + 0.5 * elapsed / (step - WARMUP) >= args.seconds else 0.0)
            if ranks > 1:
                dist.broadcast(stop, 0)
            if stop.item():
                break
        chunk = train[torch.randint(0, high, (B,), generator=gen)[:, None] + offsets].long()
        for group in opt.param_groups:
            group["lr"] = lr_at(args, step)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(chunk[:, :-1]).reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        steps = step + 1
    barrier()
    seconds = time.perf_counter() - t0
    timed = steps - WARMUP
    if timed <= 0:  # too few steps to leave the warm-up out
        seconds, timed = time.perf_counter() - train_start, steps
    val_loss, val_acc = evaluate(model.module if ranks > 1 else model, val, T, rank, ranks)
    if rank == 0:
        result.put({"tokens_per_s": timed * B * ranks * T / seconds, "val_loss": val_loss, "val_acc": val_acc,
                    "steps": steps, "train_s": seconds, "last_loss": loss.item()})
    if ranks > 1:
        # Tear DDP down while the peer is still there: left to the interpreter's exit, the reducer's and gloo's
        # destructors now and then spin forever once the other rank has gone.
        del model, opt, loss
        dist.barrier()
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-per-rank", type=int, default=16, help="sequences per rank per step (default 16)")
    p.add_argument("--steps", type=int, default=150, help="steps, and the LR schedule's length (default 150)")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this much training time past the warm-up steps (or at --steps)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100, help="LR warmup steps (default 100, as sovtrain)")
    p.add_argument("--min-lr-ratio", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--data", default="/usr/share/games/fortunes")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.ranks < 1 or args.batch_per_rank < 1 or args.steps < 1 or args.width % args.heads:
        sys.exit("torch_gpt: need --ranks >= 1, --batch-per-rank >= 1, --steps >= 1, --heads dividing --width")
    if args.seconds is not None and args.seconds <= 0:
        sys.exit("torch_gpt: --seconds must be positive")
    try:
        load_corpus(args.data, args.context)
        r = spawn_ranks(worker, args, args.ranks)
    except Exception as e:
        print(f"torch_gpt: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"bench": "train", "model": "gpt", "impl": "torch", "ranks": args.ranks,
                      "tokens_per_s": round(r["tokens_per_s"], 1), "val_loss": round(r["val_loss"], 5),
                      "val_acc": round(r["val_acc"], 5), "steps": r["steps"], "train_s": round(r["train_s"], 3),
                      "batch_per_rank": args.batch_per_rank, "context": args.context,
                      "layers": args.layers, "heads": args.heads, "width": args.width,
                      "torch": torch.__version__, "threads_per_rank": 1}))


if __name__ == "__main__":
    main()
