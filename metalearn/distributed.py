"""Multi-process meta-training with torch.distributed (launch with ``torchrun``; gloo on CPU, NCCL on GPU).

Every rank samples the same meta-batch (same seed), adapts its own shard of the tasks, and the
per-task meta-gradients are summed across ranks with an explicit all-reduce (DistributedDataParallel
does not support double backward). The result equals the single-process meta-update on the same tasks.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (round robin: rank r takes r, r + world, ...)."""
    return list(items[rank()::world_size()])


def all_reduce_sum(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum each tensor across ranks (one flat buffer, one collective)."""
    if not is_active():
        return grads
    names = list(grads)
    flat = torch.cat([grads[n].reshape(-1).float() for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = {}, 0
    for n in names:
        size = grads[n].numel()
        out[n] = flat[offset: offset + size].view_as(grads[n]).to(grads[n].dtype)
        offset += size
    return out


def init_from_env(backend: str | None = None) -> bool:
    """Initialize the process group when launched by torchrun (WORLD_SIZE set); return whether it is active."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_active()
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return is_active()
