"""Divergence guards: find a NaN or inf in a meta-step and name the task and step it came from."""
from __future__ import annotations

import math
from typing import Optional

import torch


def first_nonfinite(episodes, results, summed: dict[str, torch.Tensor]) -> Optional[str]:
    """A message naming the first non-finite inner loss, query loss or gradient; None when all are finite."""
    for episode, result in zip(episodes, results):
        where = f"task {episode.task_id or '?'!r}"
        for i, loss in enumerate(result.support_losses):
            if not math.isfinite(loss):
                return f"inner loss is {loss} at inner step {i} of {where}"
        if not math.isfinite(result.query_loss):
            return f"query loss is {result.query_loss} for {where}"
        for name, grad in result.grads.items():
            if not torch.isfinite(grad).all():
                return f"meta-gradient of {name!r} is not finite for {where}"
    for name, grad in summed.items():
        if not torch.isfinite(grad).all():
            return f"summed meta-gradient of {name!r} is not finite (on another rank)"
    return None
