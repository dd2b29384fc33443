"""sovtrain.torch: checkpoints for a PyTorch (DDP) training loop in about three lines.

    ck = sovtrain.torch.Checkpointer("run/checkpoints", model, optimizer, scheduler, every=500)
    step = ck.resume()                 # 0, or the step of the checkpoint it resumed from
    while step < total:
        ...one training step...
        step += 1
        ck.step(step, data=position)   # saves when due; on SIGTERM, SIGINT or SIGUSR1: saves and exits

A checkpoint holds the model, the optimizer, the LR scheduler, every rank's random number generators (torch's,
CUDA's, numpy's, Python's) and the data position that the loop gives (any plain value, e.g. {"epoch": 2, "batch":
17}; `ck.data` after resume). So a job that `sovtrain launch --max-restarts` restarts after a failure continues
bit for bit. The ranks agree on when to save and when to stop through one small allreduce per step on a gloo
group of their own."""

import os
import random
import signal
import sys
import time

import numpy as np
import torch

from . import checkpoint as _ckpt
from ._tensors import Shard

__all__ = ["Checkpointer"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _log(rank, message):
    if rank == 0:
        print(f"sovtrain: {message}", file=sys.stderr, flush=True)


class _Ranks:
    """The job's ranks as the checkpointer sees them: torch.distributed with a gloo group of its own (a NCCL job's
    default group would need GPU tensors for these small exchanges), or one rank."""

    def __init__(self):
        import torch.distributed as dist
        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        if self.dist:
            self.group = dist.new_group(backend="gloo")
            self.rank, self.size = dist.get_rank(), dist.get_world_size()
        else:
            self.group, self.rank, self.size = None, 0, 1

    def any(self, *flags):
        """Per flag: whether it is set on any rank."""
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        if self.dist:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in t.tolist()]

    def allgather(self, value):
        if not self.dist:
            return [value]
        out = [None] * self.size
        self.dist.all_gather_object(out, value, group=self.group)
        return out


class Checkpointer:
    """Saves a training loop's state every `every` steps and/or `every_seconds` seconds, resumes it, and stops the
    job cleanly on a signal.

    model, optimizer, scheduler: what is saved and restored (any object with state_dict/load_state_dict; the
    model as the loop holds it, DDP wrapper included). keep: checkpoints kept. stop_exit_code: the exit status
    after a signal's clean stop: 0, or non-zero for a Kubernetes indexed Job, where an index that exits 0 counts as
    complete (sovtrain train's --stop-exit-code). key_file / key_command: checkpoints encrypted at rest (sovtrain
    train's --ckpt-key-file / --ckpt-key-command; docs/security.md)."""

    def __init__(self, dir, model, optimizer=None, scheduler=None, *, every=None, every_seconds=None, keep=3,
                 threads=None, stop_exit_code=0, key_file=None, key_command=None):
        if every is None and every_seconds is None:
            raise ValueError("sovtrain: Checkpointer: give every=STEPS, every_seconds=S or both")
        self.dir, self.model, self.optimizer, self.scheduler = dir, model, optimizer, scheduler
        self.every, self.every_seconds, self.keep, self.threads = every, every_seconds, keep, threads
        self.stop_exit_code = stop_exit_code
        self._key = {"key_file": key_file, "key_command": key_command}
        self.data = None
        self._ranks = _Ranks()
        self._stop_signal = None
        self._last_save_time = time.monotonic()
        self._saved_step = None
        self._handle = None
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame):
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        self._stop_signal = signal.Signals(signum).name

    @property
    def stop_requested(self):
        return self._stop_signal is not None

    # ---- saving ----

    def state(self, step):
        """What a checkpoint holds at `step`."""
        return {"step": step, "world_size": self._ranks.size, "data": self.data,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": self._rng_state()}

    def save(self, step, blocking=False):
        """Saves now (every rank calls it at the same step). Returns once the state is copied."""
        if self._saved_step == step:
            return self._handle
        self._handle = _ckpt.save(self.state(step), self.dir, step, keep=self.keep, threads=self.threads,
                                  comm=self._ranks.group if self._ranks.dist else None, **self._key)
        self._saved_step = step
        self._last_save_time = time.monotonic()
        if blocking:
            self._handle.wait()
        return self._handle

    def step(self, step, data=None):
        """Call after each training step with the number of steps done and the data position to resume from.
        Saves when a save is due; after a stop signal (on any rank) saves, waits for it and exits the process."""
        self.data = data
        due_by_time = (self._ranks.rank == 0 and self.every_seconds is not None
                       and time.monotonic() - self._last_save_time >= self.every_seconds)
        stop, due_by_time = self._ranks.any(self.stop_requested, due_by_time)
        if stop:
            self._stop(step)
        if due_by_time or (self.every and step % self.every == 0):
            self.save(step)

    def _stop(self, step):
        self.save(step)
        path = self._handle.wait()
        _log(self._ranks.rank, f"stopping at step {step} on {self._stop_signal or 'another rank s stop signal'}: "
                               f"{path} holds the job's state; a new run resumes from it")
        self.close()
        sys.exit(self.stop_exit_code)

    def close(self):
        """Waits for the save in flight; raises its failure."""
        if self._handle is not None:
            self._handle.wait()

    # ---- resuming ----

    def resume(self, what=None):
        """Restores the newest usable checkpoint and returns its step, or 0 when starting fresh.

        what: "auto" (the default, or $SOVTRAIN_RESUME, which `sovtrain launch` sets on restarts): the newest
        checkpoint under dir that loads, falling back to older ones, else start fresh; "latest": the same, but
        there must be one; "never": start fresh; or the path of a checkpoint."""
        what = what or os.environ.get("SOVTRAIN_RESUME") or "auto"
        if what == "never":
            return 0
        source = self.dir if what in ("auto", "latest") else what
        try:
            state = _ckpt.load(source, **self._key)
        except _ckpt.SovError as e:
            if what == "auto" and "no checkpoint in" in str(e):
                _log(self._ranks.rank, f"no checkpoint in {source}: starting fresh")
                return 0
            raise
        steps = self._ranks.allgather(state["step"])
        if len(set(steps)) != 1:
            raise RuntimeError(f"sovtrain: the ranks resumed from different checkpoints (steps {steps}): is "
                               f"{self.dir} the same directory on every host?")
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self._set_rng_state(state["rng"], state["world_size"])
        self.data = state["data"]
        self._saved_step = state["step"]
        _log(self._ranks.rank, f"resumed from step {state['step']} ({state['world_size']} ranks saved it)")
        return state["step"]

    # ---- random number generators: one row per rank ----

    def _row(self, a):
        """This rank's row of a [world, ...] tensor that every rank fills its own row of."""
        return Shard(a[None], (self._ranks.rank,) + (0,) * a.ndim, (self._ranks.size,) + tuple(a.shape))

    def _rng_state(self):
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        version, mt, gauss_next = random.getstate()
        state = {
            "torch": self._row(torch.get_rng_state()),
            "numpy_keys": self._row(np.asarray(keys, dtype=np.uint32)),
            "numpy_rest": self._row(np.array([pos, has_gauss, gauss], dtype=np.float64)),
            "python_mt": self._row(np.asarray(mt, dtype=np.int64)),
            "python_rest": self._row(np.array([version, gauss_next is not None, gauss_next or 0.0], np.float64)),
        }
        if torch.cuda.is_available():
            state["cuda"] = self._row(torch.stack(torch.cuda.get_rng_state_all()))
        return state

    def _set_rng_state(self, rng, saved_world):
        r = self._ranks.rank
        if r >= saved_world:
            _log(0, f"rank {r} has no random state in a checkpoint of {saved_world} ranks: it keeps its seeding")
            return
        torch.set_rng_state(rng["torch"][r].clone())
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"][r]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(list(rng["cuda"][r]))
        pos, has_gauss, gauss = np.asarray(rng["numpy_rest"])[r].tolist()
        np.random.set_state(("MT19937", np.asarray(rng["numpy_keys"])[r], int(pos), int(has_gauss), gauss))
        version, has_next, gauss_next = np.asarray(rng["python_rest"])[r].tolist()
        mt = tuple(int(v) for v in np.asarray(rng["python_mt"])[r])
        random.setstate((int(version), mt, gauss_next if has_next else None))
