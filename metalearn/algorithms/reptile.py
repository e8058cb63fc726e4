"""Reptile (Nichol et al. 2018): move the init toward the task-adapted parameters.

The pseudo-gradient is ``init - fast`` (first-order inner loop on the support set, no meta-graph);
with the outer optimizer ``sgd`` at learning rate eps the update is the paper's
``init <- init + eps * mean_tasks(fast - init)``.
"""
from __future__ import annotations

import torch

from ..learner import Episode, Learner
from .interface import TaskGradient


def task_gradient(learner: Learner, episode: Episode, on_loss=None) -> TaskGradient:
    fast, support_losses = learner.inner_adapt(episode, order="first", on_loss=on_loss)
    with torch.no_grad():
        query_loss = learner.loss(fast, episode.query, episode.kind)
    grads = {n: (init - fast[n]).detach() for n, init in learner.meta_parameters().items() if n in fast}
    for n, v in learner.meta_parameters().items():  # learned step sizes get no Reptile signal
        grads.setdefault(n, torch.zeros_like(v))
    return TaskGradient(grads, float(query_loss), support_losses)
