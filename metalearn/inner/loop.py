"""The unrolled inner loop: k differentiable optimizer steps on a task's support loss.

``order`` decides what the meta-gradient sees:

* ``"second"``: full MAML; every inner gradient is part of the graph (``create_graph=True``).
* ``"first"``: first-order MAML; inner gradients are detached, so d fast / d init = identity.
* ``"truncated"``: the first ``steps - truncate`` steps are first order, the last ``truncate``
  steps second order (backpropagate through the last T steps only; memory grows with T, not k).

With ``checkpoint=True`` each inner step is recomputed in the backward pass (non-reentrant
activation checkpointing), trading compute for memory.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ..types import LossFn, Params
from .optimizers import GradientTransformation
from .step_sizes import at_step


def second_order_at(step: int, steps: int, order: str, truncate: Optional[int]) -> bool:
    if order == "second":
        return True
    if order == "truncated":
        return step >= steps - (truncate or steps)
    return False


def unroll(loss_fn: LossFn, params: Params, step_sizes: Params, optimizer: GradientTransformation, steps: int,
           order: str = "second", truncate: Optional[int] = None, checkpoint: bool = False,
           trainable: Optional[Iterable[str]] = None,
           on_loss: Optional[Callable[[int, torch.Tensor], None]] = None,
           on_step: Optional[Callable[[int, Params], None]] = None,
           step_size: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] = lambda size, step, p: at_step(size, step),
           ) -> tuple[Params, list[torch.Tensor]]:
    """Adapt ``params`` by ``steps`` optimizer steps on ``loss_fn``; return the fast params and support losses.

    ``loss_fn`` returns a scalar, or a vector of independent losses (one per task of a batched
    meta-batch, see ``inner.batched``) whose sum is differentiated. ``step_size(size, step, param)``
    gives the multiplier of a tensor's direction at ``step``. ``trainable`` (ANIL) restricts the
    adapted tensors to those names; the rest pass through unchanged but stay in the graph.
    ``on_loss(step, loss)`` sees each support loss (e.g. to guard against NaN); ``on_step(k, params)``
    sees the parameters after k = 0, 1, ..., steps steps (evaluation scores several step counts along
    one trajectory).
    The losses come back detached, one tensor per step.
    """
    names = [n for n in params if trainable is None or n in set(trainable)]
    state = optimizer.init({n: params[n] for n in names})
    losses: list[torch.Tensor] = []
    if on_step is not None:
        on_step(0, params)
    for step in range(steps):
        create_graph = second_order_at(step, steps, order, truncate)

        def one_step(current: Params, opt_state):
            loss = loss_fn(current)  # () or (tasks,)
            grads = torch.autograd.grad(loss.sum(), [current[n] for n in names], create_graph=create_graph,
                                        allow_unused=True)
            grads = {n: torch.zeros_like(current[n]) if g is None else g for n, g in zip(names, grads)}
            if not create_graph:
                grads = {n: g.detach() for n, g in grads.items()}
            directions, opt_state = optimizer.update(grads, opt_state, {n: current[n] for n in names})
            new = dict(current)
            for n in names:
                new[n] = current[n] - step_size(step_sizes[n], step, current[n]) * directions[n]
            return new, opt_state, loss.detach()

        if checkpoint and create_graph:
            params, state, loss = torch_checkpoint(one_step, params, state, use_reentrant=False)
        else:
            params, state, loss = one_step(params, state)
        if on_loss is not None:
            on_loss(step, loss)
        if on_step is not None:
            on_step(step + 1, params)
        losses.append(loss)
    return params, losses
