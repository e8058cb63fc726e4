"""The inner loops of a whole meta-batch as one batched computation (``torch.func.vmap`` over tasks).

Every adaptable tensor gets a leading task axis: ``(tasks, *shape)``. The loss of all tasks is one
``vmap`` of the ordinary per-task loss over the stacked parameters and the stacked (padded)
batches; the frozen base is shared by every task and never copied (vmap treats it as unbatched, so
a base linear layer is one matmul over the rows of all tasks). Because task t's loss depends only
on slice t of the parameters, the gradient of the *sum* of the task losses is, slice by slice, each
task's own gradient: one ``torch.autograd.grad`` call per inner step serves the whole meta-batch,
first or second order (``create_graph``), truncated or checkpointed exactly as in ``loop.unroll``.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch

from ..types import IGNORE, Batch, Params
from .loop import unroll
from .optimizers import GradientTransformation
from .step_sizes import at_step

PAD_VALUES = {"labels": IGNORE, "attention_mask": 0}  # input_ids and anything else: 0 (masked anyway)
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def stack_batches(batches: Sequence[Batch]) -> tuple[Optional[Batch], str]:
    """One batch with a leading task axis, or ``(None, why not)``.

    Token batches of different sequence lengths are right-padded to the longest (attention mask 0,
    label -100): with causal attention real tokens never see the padding, and masked keys get zero
    attention weight, so every real position computes what it computes unpadded. Different numbers
    of rows, or different shapes of non-token tensors, cannot be stacked.
    """
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        return None, "the tasks' batches have different fields"
    out = {}
    for key in sorted(keys):
        values = [torch.as_tensor(b[key]) for b in batches]
        if key in SEQUENCE_KEYS and all(v.dim() == 2 for v in values):
            rows = {v.shape[0] for v in values}
            if len(rows) > 1:
                return None, f"the tasks have different numbers of examples ({sorted(rows)})"
            width = max(v.shape[1] for v in values)
            values = [torch.nn.functional.pad(v, (0, width - v.shape[1]), value=PAD_VALUES.get(key, 0))
                      for v in values]
        elif len({tuple(v.shape) for v in values}) > 1:
            return None, f"the tasks' {key!r} tensors have different shapes"
        out[key] = torch.stack(values)  # (tasks, rows, ...)
    return out, ""


def task_axis(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-task step size (tasks,) shaped to broadcast against a stacked parameter (tasks, ...)."""
    if value.dim() == 0:
        return value
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))


def unroll_batched(loss_fn: Callable[[Params], torch.Tensor], params: Params, step_sizes: Params,
                   optimizer: GradientTransformation, steps: int, order: str = "second",
                   truncate: Optional[int] = None, checkpoint: bool = False,
                   trainable: Optional[Iterable[str]] = None,
                   on_step: Optional[Callable[[int, Params], None]] = None) -> tuple[Params, list[torch.Tensor]]:
    """``loop.unroll`` for stacked parameters: ``loss_fn`` returns the (tasks,) vector of task losses.

    ``step_sizes`` hold shared tensors (shape () or (steps,)) or per-task ones of shape
    (tasks, steps) (learned Meta-SGD sizes, so that each task's gradient is its own slice). Returns the
    fast parameters (tasks, ...) and each step's (tasks,) support losses. The optimizer must act
    elementwise (SGD, Adam): a global-norm clip would mix the tasks.
    """
    return unroll(loss_fn, params, step_sizes, optimizer, steps, order, truncate, checkpoint, trainable,
                  on_step=on_step, step_size=lambda size, step, p: task_axis(_at_step(size, step), p))


def _at_step(size: torch.Tensor, step: int) -> torch.Tensor:
    """The step size at ``step``: shared ones have shape () or (steps,), per-task ones (tasks, steps)."""
    return size[:, step] if size.dim() == 2 else at_step(size, step)
