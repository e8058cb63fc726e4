"""Meta-learning algorithms behind one interface: ``task_gradient(learner, episode) -> TaskGradient``.

MAML, first-order MAML, Meta-SGD and ANIL share ``maml.task_gradient``: they differ only in the
inner-loop settings that ``RunConfig`` fixes for them (order, learned step sizes, trainable subset).
"""
import logging
import weakref

import torch

from ..quant import transformable_4bit
from . import batched, maml, multitask, reptile
from .base import TaskGradient, grads_for

log = logging.getLogger("metalearn")

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

    With ``inner.task_batching`` "auto" (default) or "on", the whole meta-batch runs as one batched
    computation (``algorithms.batched``); "auto" falls back to a loop over tasks where batching cannot
    apply and says why once in the log, "on" raises ``ValueError`` there. In the loop each task's
    graph is freed as soon as its gradient is taken, so memory holds one task's graph. Either way
    4-bit layers go through ``quant.transformable_4bit`` (bitsandbytes' numbers, vmap-able, and the
    frozen weight dequantized once per meta-step).
    """
    mode = learner.config.inner.task_batching
    with transformable_4bit(learner.model):
        if mode != "off" and (len(episodes) > 1 or mode == "on") and learner not in _UNBATCHABLE:
            ready, why = batched.plan(learner, episodes, method, backend)
            if ready is None and mode == "on":
                raise ValueError(f"inner.task_batching='on' cannot batch this meta-batch: {why}. Use "
                                 "task_batching='auto' (falls back to a loop over tasks) or 'off'")
            if ready is not None:
                try:
                    return batched.meta_gradient(learner, ready, method)
                except RuntimeError as err:  # e.g. an op without a vmap rule, or out of memory
                    if mode == "on":
                        raise
                    _UNBATCHABLE.add(learner)
                    why = f"the batched step failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            _say_once(learner, why)
        task_gradient = get(method, backend)
        results = [task_gradient(learner, episode) for episode in episodes]
    meta = learner.meta_parameters()
    total = {n: sum(r.grads[n] for r in results) if results else torch.zeros_like(v) for n, v in meta.items()}
    return total, results


_UNBATCHABLE: "weakref.WeakSet" = weakref.WeakSet()  # learners whose batched step failed once: loop from then on
_SAID: "weakref.WeakSet" = weakref.WeakSet()  # learners whose fallback was logged (later ones go to debug)


def _say_once(learner, why: str) -> None:
    level = logging.DEBUG if learner in _SAID else logging.INFO
    _SAID.add(learner)
    log.log(level, "task batching does not apply (%s): running the meta-batch as a loop over tasks", why)


__all__ = sorted(["REGISTRY", "TaskGradient", "batched", "get", "grads_for", "maml", "meta_gradient", "multitask", "reptile"])
