"""Meta-learning algorithms behind one interface: ``task_gradient(learner, episode) -> TaskGradient``.

MAML, first-order MAML, Meta-SGD and ANIL share ``maml.task_gradient``: they differ only in the
inner-loop settings that ``RunConfig`` fixes for them (order, learned step sizes, trainable subset).
"""
import torch

from . import maml, multitask, reptile
from .base import TaskGradient, grads_for

REGISTRY = {
    "maml": maml.task_gradient,
    "fomaml": maml.task_gradient,
    "metasgd": maml.task_gradient,
    "anil": maml.task_gradient,
    "reptile": reptile.task_gradient,
    "multitask": multitask.task_gradient,
    "protonet": multitask.task_gradient,
}


def get(method: str, backend: str = "functional"):
    """The task-gradient function for ``method`` (and inner-loop ``backend``)."""
    if method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(REGISTRY)}")
    if backend == "higher":
        from . import higher_maml

        return higher_maml.task_gradient
    return REGISTRY[method]


def meta_gradient(learner, episodes, method: str, backend: str = "functional"):
    """Sum of the episodes' meta-gradients (this process's share) and the per-task results.

    Each task's graph is freed as soon as its gradient is taken, so memory holds one task's graph.
    """
    task_gradient = get(method, backend)
    results = [task_gradient(learner, episode) for episode in episodes]
    meta = learner.meta_parameters()
    total = {n: sum(r.grads[n] for r in results) if results else torch.zeros_like(v) for n, v in meta.items()}
    return total, results


__all__ = sorted(["REGISTRY", "TaskGradient", "get", "grads_for", "maml", "meta_gradient", "multitask", "reptile"])
