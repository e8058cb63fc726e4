"""Multi-task joint training, the strongest transfer baseline: no inner loop, one shared set of tensors.

Each task contributes the gradient of its loss at the shared parameters on support and query
together. For classification with a prototype head the prototypes come from the support set and the
loss is taken on the query set: that is a prototypical network (Snell et al. 2017; with
``head_metric="cosine"``, cosine similarity over a temperature), available as ``method="protonet"``
(labels are episode-local, so a classification family can only be trained this way).
"""
from __future__ import annotations

from ..learner import Episode, Learner
from .interface import TaskGradient, grads_for


def task_gradient(learner: Learner, episode: Episode, on_loss=None) -> TaskGradient:
    meta = learner.meta_parameters()
    params = learner.start_params(episode)
    if episode.kind == "classification":
        loss = learner.loss(params, episode.query, episode.kind)
    else:
        loss = (learner.loss(params, episode.support, episode.kind) + learner.loss(params, episode.query, episode.kind)) / 2
    if on_loss is not None:
        on_loss(-1, loss)
    return TaskGradient(grads_for(loss, meta), float(loss.detach()), [])
