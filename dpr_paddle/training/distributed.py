"""Data parallelism on paddle.distributed, with negatives shared across ranks.

Launch with Paddle's own launcher: `python -m paddle.distributed.launch --devices 0,1 ...`
(`--nproc_per_node 2` on CPU, which runs gloo). Each rank encodes its slice of the global
batch; `gather_with_grad` all-gathers representations so every question is scored against
every passage of every rank, with the gradient flowing through the local slice only.

Gradient scale: every rank computes the same global loss (mean over all K*B questions) and
back-propagates into its own slice, so the *sum* of the ranks' gradients is exactly the
gradient of one process with batch K*B. `all_reduce_gradients` sums once per step, after the
last chunk (the gradient cache accumulates locally until then). DPR averages these gradients
instead, which leaves its update 1/K off; GC-DPR patches that with a factor. We sum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle
import paddle.distributed as dist

_BUCKET_ELEMENTS = 1 << 22  # 16 MB of float32 per all_reduce


@dataclass
class World:
    """This process's rank and the number of processes (1 without a launcher)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def init(cls) -> "World":
        """Join the process group if launched by paddle.distributed.launch; else a world of one."""
        size = dist.get_world_size()
        if size > 1:
            if not dist.is_initialized():
                dist.init_parallel_env()
            return cls(rank=dist.get_rank(), size=size)
        return cls()

    @classmethod
    def from_launcher(cls) -> "World":
        """Rank and size as the launcher set them, without joining a process group (for jobs such
        as encoding whose ranks never talk to each other)."""
        return cls(rank=dist.get_rank(), size=dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for all ranks (no-op in a world of one)."""
        if self.size > 1:
            dist.barrier()

    def shutdown(self) -> None:
        """Leave the process group together. Without it, rank 0 (which hosts the TCP store) was seen
        to abort (SIGABRT) while exiting after a finished run, when the other rank had left first."""
        if self.size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def gather_with_grad(self, x: paddle.Tensor) -> paddle.Tensor:
        """[n, D] local -> [K*n, D] in rank order; gradient flows to the local slice only."""
        if self.size == 1:
            return x
        parts = []
        dist.all_gather(parts, x.detach())
        parts[self.rank] = x
        return paddle.concat(parts, axis=0)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """[n] local -> [K*n] in rank order (ids, keys: no gradient)."""
        if self.size == 1:
            return x
        parts = []
        dist.all_gather(parts, paddle.to_tensor(x))
        return np.concatenate([p.numpy() for p in parts])

    def sum_scalar(self, value: float) -> float:
        """A number summed over ranks (a loss or a count each rank computed on its slice)."""
        if self.size == 1:
            return value
        t = paddle.to_tensor([float(value)], dtype="float64")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.numpy()[0])

    def wrap(self, model):
        """Make every rank start from rank 0's parameters."""
        if self.size > 1:
            with paddle.no_grad():
                for p in model.parameters():
                    dist.broadcast(p, src=0)
        return model

    def all_reduce_gradients(self, model) -> None:
        """Sum gradients over ranks, in flat buckets (one collective per ~16 MB)."""
        if self.size == 1:
            return
        params = [p for p in model.parameters() if p.grad is not None]
        bucket, count = [], 0
        for p in params + [None]:
            if p is not None:
                bucket.append(p)
                count += p.grad.size
            if bucket and (p is None or count >= _BUCKET_ELEMENTS):
                flat = paddle.concat([q.grad.reshape([-1]) for q in bucket])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                offset = 0
                for q in bucket:
                    n = q.grad.size
                    q.grad.set_value(flat[offset : offset + n].reshape(q.grad.shape))
                    offset += n
                bucket, count = [], 0
