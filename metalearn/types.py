"""Type aliases shared across metalearn (optax style: one place for them)."""
from __future__ import annotations

from typing import Callable, Dict, Mapping

import torch

Params = Dict[str, torch.Tensor]
"""Adaptable tensors by name (LoRA A/B, soft prompt, head, ...): the things the inner loop changes."""
Grads = Dict[str, torch.Tensor]
Batch = Mapping[str, torch.Tensor]
"""Model-ready tensors for one support or query set (input_ids, labels, x, y, ...)."""
LossFn = Callable[[Params], torch.Tensor]
"""A task's loss as a function of the adaptable parameters only."""
IGNORE = -100
"""Label id of a token the loss skips (prompt and padding positions): the Hugging Face convention."""
