"""The outer update: average the tasks' meta-gradients, clip, step the meta-optimizer and schedule."""
from __future__ import annotations

import math

import torch

from .config import OuterConfig
from .types import Params


def make_optimizer(meta: Params, config: OuterConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (default) or SGD over the meta-parameters, with warmup then constant/cosine/linear decay."""
    params = list(meta.values())
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = max(config.meta_steps, 1)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(total - config.warmup_steps, 1)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if config.schedule == "linear":
            return max(1.0 - progress, 0.0)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def apply(meta: Params, grads: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
          scheduler, clip_norm: float | None) -> float:
    """Set .grad, clip the global norm, step; return the pre-clip gradient norm."""
    for name, tensor in meta.items():
        tensor.grad = grads[name].to(tensor.dtype)
    params = list(meta.values())
    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return float(norm)
