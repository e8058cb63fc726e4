"""Step sizes per adaptable tensor: constant, LoRA+ (B gets ``ratio`` x lr), or learned (Meta-SGD).

Step sizes are a dict of tensors like the parameters themselves, so Meta-SGD's learned ones are
saved, loaded and differentiated like any other tensor (Li et al. 2017, "Meta-SGD").
A tensor of shape () applies to every step; shape (steps,) holds one step size per step.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..types import Params


def is_lora_b(name: str) -> bool:
    return ".lora_B." in name or name.endswith("lora_B.weight")


def initial_step_sizes(names: Iterable[str], lr: float, lora_plus_ratio: float = 1.0, steps: int = 1,
                       per_step: bool = False, dtype=torch.float32) -> Params:
    """lr for every tensor, times ``lora_plus_ratio`` for LoRA's B matrices (LoRA+, Hayou et al. 2024)."""
    shape = (steps,) if per_step else ()
    return {n: torch.full(shape, lr * (lora_plus_ratio if is_lora_b(n) else 1.0), dtype=dtype) for n in names}


def at_step(step_size: torch.Tensor, step: int) -> torch.Tensor:
    return step_size[step] if step_size.dim() == 1 else step_size
