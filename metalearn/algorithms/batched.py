"""Task-batched meta-gradients: MAML (1st/2nd order, truncated), Meta-SGD, ANIL and Reptile for a whole meta-batch at once.

The same mathematics as ``maml.task_gradient`` / ``reptile.task_gradient`` summed over tasks, as one
computation (``inner.batched.unroll_batched``: ``torch.func.vmap`` of the per-task loss over
task-stacked adapters, one ``autograd.grad`` per inner step for every task). The meta-parameters
enter as one leaf per task (``init`` repeated along a task axis), so the gradient with respect to
those leaves is every task's own meta-gradient, slice by slice: the per-task results (and the
divergence guards that read them) are exactly what the per-task loop returns, and their sum is the
meta-gradient.

What cannot be batched (and falls back to the loop): the higher backend, multitask (no inner loop),
an inner ``clip_norm`` (a global norm per task), tasks of different kinds or ``n_way``, and support or
query sets with different numbers of examples. Different sequence lengths are padded. Attention
masks (BERT-family encoders, SDPA and eager attention) are built inside the vmapped function without
transformers' value-dependent shortcuts (``attention_masks.vmappable_masks``).
Memory: the batched graph holds every task's inner loop at once (about meta-batch x one task's);
``inner.task_chunk=C`` batches C tasks at a time; ``task_batching="off"`` keeps one task's graph at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..inner.batched import stack_batches
from ..learner import Episode, Learner
from ..types import Batch, Grads, Params
from .interface import TaskGradient

METHODS = ("maml", "fomaml", "metasgd", "anil", "reptile")


@dataclass
class Plan:
    """A meta-batch ready to run batched: its episodes and their stacked support and query sets."""

    episodes: Sequence[Episode]
    support: Batch  # every tensor (tasks, ...)
    query: Batch


def plan(learner: Learner, episodes: Sequence[Episode], method: str, backend: str) -> tuple[Optional[Plan], str]:
    """The batched plan for these episodes, or ``(None, the reason it cannot apply)``."""
    if backend != "functional":
        return None, f"backend={backend!r} adapts one task at a time"
    if method not in METHODS:
        return None, f"method {method!r} has no inner loop to batch"
    if learner.config.inner.clip_norm is not None:
        return None, "inner clip_norm clips each task's own gradient norm, which the batched step does not do"
    if not episodes:
        return None, "the meta-batch is empty"
    if len({e.kind for e in episodes}) > 1:
        return None, "the tasks are of different kinds"
    if episodes[0].kind == "classification" and len({e.n_way for e in episodes}) > 1:
        return None, f"the tasks have different n_way ({sorted({e.n_way for e in episodes})})"
    support, why = stack_batches([e.support for e in episodes])
    if support is None:
        return None, "support sets: " + why
    query, why = stack_batches([e.query for e in episodes])
    if query is None:
        return None, "query sets: " + why
    return Plan(episodes, support, query), ""


def per_task_leaves(meta: Params, tasks: int) -> Params:
    """Each meta-parameter repeated along a new task axis, as a leaf: its gradient is per task."""
    return {n: t.detach().unsqueeze(0).expand(tasks, *t.shape).clone().requires_grad_(True) for n, t in meta.items()}


def meta_gradient(learner: Learner, plan: Plan, method: str) -> tuple[Grads, list[TaskGradient]]:
    """Summed meta-gradient and per-task results for the planned meta-batch (see the module docstring)."""
    inner = learner.config.inner
    episodes = plan.episodes
    tasks, kind, n_way = len(episodes), episodes[0].kind, episodes[0].n_way
    leaves = per_task_leaves(learner.meta_parameters(), tasks)
    init = {n: leaves[n] for n in learner.init}
    sizes = dict(learner.step_sizes)
    if inner.learn_step_sizes:  # per-task views (tasks, steps) of the learned sizes, so their gradients are per task
        for n in sizes:
            leaf = leaves["lr:" + n]
            sizes[n] = leaf if leaf.dim() == 2 else leaf.unsqueeze(1).expand(tasks, inner.steps)
    reptile = method == "reptile"
    fast, support_losses = learner.inner_adapt_batched(plan.support, kind, n_way, init, sizes,
                                                       order="first" if reptile else inner.order)
    if reptile:
        with torch.no_grad():
            query_losses = learner.batched_loss(fast, plan.query, kind)
        stacked = {n: (leaves[n] - fast[n]).detach() if n in fast else torch.zeros_like(leaves[n]) for n in leaves}
    else:
        query_losses = learner.batched_loss(fast, plan.query, kind)
        names = list(leaves)
        grads = torch.autograd.grad(query_losses.sum(), [leaves[n] for n in names], allow_unused=True)
        stacked = {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, grads)}
    support_losses = torch.stack(support_losses, 1).tolist() if support_losses else [[] for _ in episodes]
    query_values = query_losses.detach().tolist()
    results = [TaskGradient({n: g[t] for n, g in stacked.items()}, query_values[t], support_losses[t])
               for t in range(tasks)]
    return {n: g.sum(0) for n, g in stacked.items()}, results
