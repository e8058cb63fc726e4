"""Meta-learning algorithms behind one interface: ``task_gradient(learner, episode) -> TaskGradient``.

MAML, first-order MAML, Meta-SGD and ANIL share ``maml.task_gradient``: they differ only in the
inner-loop settings that ``RunConfig`` fixes for them (order, learned step sizes, trainable subset).
"""
from . import maml, multitask, reptile
from .base import TaskGradient, grads_for

REGISTRY = {
    "maml": maml.task_gradient,
    "fomaml": maml.task_gradient,
    "metasgd": maml.task_gradient,
    "anil": maml.task_gradient,
    "reptile": reptile.task_gradient,
    "multitask": multitask.task_gradient,
}


def get(method: str, backend: str = "functional"):
    """The task-gradient function for ``method`` (and inner-loop ``backend``)."""
    if method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(REGISTRY)}")
    if backend == "higher":
        from . import higher_maml

        return higher_maml.task_gradient
    return REGISTRY[method]


__all__ = sorted(["REGISTRY", "TaskGradient", "get", "grads_for", "maml", "multitask", "reptile"])
