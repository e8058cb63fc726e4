"""Meta-learning algorithms behind one interface: ``task_gradient(learner, episode) -> TaskGradient``.

MAML, first-order MAML, Meta-SGD and ANIL share ``maml.task_gradient``: they differ only in the
inner-loop settings that ``RunConfig`` fixes for them (order, learned step sizes, trainable subset).
"""
import logging
import weakref

import torch

from ..quant import transformable_4bit
from . import batched, maml, multitask, reptile
from .interface import TaskGradient, grads_for

__all__ = ["REGISTRY", "TaskGradient", "batched", "get", "grads_for", "maml", "multitask", "reptile"]

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

    With ``inner.task_batching`` "auto" (default) or "on", the meta-batch runs as one batched
    computation (``algorithms.batched``), or as batched chunks of ``inner.task_chunk`` tasks (memory
    bounded by the chunk, not the meta-batch). "auto" falls back to a loop over tasks where batching
    cannot apply and says why in a warning, once per learner; "on" raises there. In the loop each
    task's graph is freed as soon as its gradient is taken, so memory holds one task's graph. Either
    way 4-bit layers go through ``quant.transformable_4bit`` (bitsandbytes' numbers, vmap-able, and the
    frozen weight dequantized once per meta-step).
    """
    chunk = learner.config.inner.task_chunk or max(len(episodes), 1)
    total = {n: torch.zeros_like(v) for n, v in learner.meta_parameters().items()}
    results = []
    with transformable_4bit(learner.model):
        for start in range(0, len(episodes), chunk):
            summed, part = _chunk(learner, episodes[start:start + chunk], method, backend)
            total = {n: total[n] + summed[n] for n in total}
            results += part
    return total, results


def _chunk(learner, episodes, method: str, backend: str):
    """Summed meta-gradient and per-task results of one chunk: batched where it can be, else a loop."""
    mode = learner.config.inner.task_batching
    if method in REGISTRY and method not in batched.METHODS or backend != "functional":
        mode = "off"  # no inner loop to batch (multitask, protonet), or the higher backend: nothing to fall back from
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
    return {n: sum(r.grads[n] for r in results) for n in results[0].grads}, results


_UNBATCHABLE: "weakref.WeakSet" = weakref.WeakSet()  # learners whose batched step failed once: loop from then on
_SAID: "weakref.WeakSet" = weakref.WeakSet()  # learners whose fallback was reported (later ones go to debug)


def _say_once(learner, why: str) -> None:
    """A warning the first time a learner falls back to the loop (it is slower), debug after that."""
    level = logging.DEBUG if learner in _SAID else logging.WARNING
    _SAID.add(learner)
    log.log(level, "task batching does not apply (%s): running the meta-batch as a loop over tasks, which is "
            "slower; set inner.task_batching='off' to choose the loop and silence this", why)


__all__ = sorted(["REGISTRY", "TaskGradient", "batched", "get", "grads_for", "maml", "meta_gradient", "multitask", "reptile"])
