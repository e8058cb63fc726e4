"""MAML (Finn et al. 2017) and its variants that differ only in the inner loop's settings.

* second order: the query loss is differentiated through every inner step;
* first order (FOMAML): inner gradients are detached (``inner.order="first"``);
* truncated: only the last T inner steps are second order;
* Meta-SGD (Li et al. 2017): the same, with learned per-tensor step sizes among the meta-parameters;
* ANIL (Raghu et al. 2020): the inner loop adapts only ``inner.trainable`` (e.g. the head or the
  soft prompt); the outer loop still updates everything.
"""
from __future__ import annotations

from ..learner import Episode, Learner
from .interface import TaskGradient, grads_for


def task_gradient(learner: Learner, episode: Episode, on_loss=None) -> TaskGradient:
    meta = learner.meta_parameters()
    fast, support_losses = learner.inner_adapt(episode, on_loss=on_loss)
    query_loss = learner.loss(fast, episode.query, episode.kind)
    if on_loss is not None:
        on_loss(-1, query_loss)
    return TaskGradient(grads_for(query_loss, meta), float(query_loss.detach()), support_losses)
