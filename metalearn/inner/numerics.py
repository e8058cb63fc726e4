"""NaN-safe numerics for differentiable inner optimizers (after optax's numerics.py).

``sqrt`` has an infinite derivative at 0. Inside an unrolled inner loop the second-order graph
differentiates through Adam's ``sqrt(v)``; for a tensor whose gradient is exactly zero (LoRA's A
at step one, when B = 0) that gives ``0 * inf = NaN`` in the meta-gradient. Adding ``eps_root``
under the root keeps the derivative finite.
"""
from __future__ import annotations

import torch


def safe_sqrt(x: torch.Tensor, eps_root: float) -> torch.Tensor:
    """``sqrt(x + eps_root)``: finite value and finite derivative at x = 0."""
    return torch.sqrt(x + eps_root)


def safe_norm(tensors, eps_root: float = 1e-16) -> torch.Tensor:
    """Global L2 norm of several tensors, differentiable at zero."""
    return safe_sqrt(sum((t * t).sum() for t in tensors), eps_root)
