"""The one interface every algorithm honours: a task's contribution to the meta-gradient."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..types import Grads, Params


@dataclass
class TaskGradient:
    """One task's (pseudo-)gradient for each meta-parameter, and what to log."""

    grads: Grads
    query_loss: float
    support_losses: list[float] = field(default_factory=list)


def grads_for(loss: torch.Tensor, meta: Params) -> Grads:
    """d loss / d meta-parameter, with zeros (not None) for tensors the loss does not reach."""
    values = list(meta.values())
    grads = torch.autograd.grad(loss, values, allow_unused=True)
    return {n: torch.zeros_like(v) if g is None else g for (n, v), g in zip(meta.items(), grads)}


TaskGradientFn = Callable[..., TaskGradient]
