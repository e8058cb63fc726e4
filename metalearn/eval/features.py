"""Pooled features computed once per text: the frozen baselines and every method's step 0 share them.

A method that does not adapt (the frozen encoder, or any learner before its first inner step) maps a
text to the same feature vector in every episode. CLINC150's 45 test intents hold 1,350 texts, while
600 episodes of 15-way 1-shot with 5 queries per class ask for 54,000 encodings. ``FeatureCache``
encodes each distinct text once per run, for one model and one set of parameters (a cache per
method: the run keys them by model and parameters, the cache by text), in batches of texts of
similar length so that little is spent on padding. Mean pooling ignores padded positions, so a cached
feature equals the one computed inside an episode's batch up to floating-point rounding (another
batch shape may sum in another order).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional, Sequence

import torch

from ..functional import head_logits, pooled, prototypes
from ..model import TaskModel
from ..tasks.task import Task
from ..types import Params
from .metrics import classification_scores

__all__ = ["FeatureCache", "step0_scores"]


class FeatureCache:
    """Pooled features (hidden,) of texts under ``model`` with ``params``, each text encoded once.

    ``context`` (optional) is entered around every encoding, e.g. ``Learner.frozen`` switching
    the adapters off.

    Example:
        >>> cache = FeatureCache(learner.model, learner.init)
        >>> cache(["set an alarm", "play jazz"]).shape  # (2, hidden)
    """

    def __init__(self, model: TaskModel, params: Params, batch_size: int = 64,
                 context: Optional[Callable[[], ContextManager]] = None):
        self.model = model
        self.params = {n: t.detach() for n, t in params.items()}
        self.batch_size = batch_size
        self.context = context or contextlib.nullcontext
        self.rows: dict[str, torch.Tensor] = {}
        self.encoded = 0  # texts run through the model so far (the rest came from the cache)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if missing:
            self._encode(missing)
        return torch.stack([self.rows[t] for t in texts])

    def _encode(self, texts: list[str]) -> None:
        with torch.no_grad(), self.context():
            self.rows.update(zip(texts, pooled(self.model, self.params, texts, self.batch_size)))
        self.encoded += len(texts)


def step0_scores(cache: FeatureCache, start: Params, task: Task, prototype_head: bool) -> dict[str, float]:
    """A learner's scores before any inner step (its init, and a prototype head from the support set).

    The same numbers as adapting for 0 steps and scoring the query (``score.score_params``), from
    cached features: ``start`` holds the init (and a learned head), ``prototype_head`` says to build
    the head from the support features as ``Learner.start_params`` does.
    """
    model = cache.model
    params = dict(start)
    if prototype_head:
        labels = torch.as_tensor(task.support["label"]).long().to(model.device)
        params.update(prototypes(model, cache(list(task.support["text"])), labels, task.n_way))
    with torch.no_grad():
        lg = head_logits(model, params, cache(list(task.query["text"])))  # (n_query, n_way)
    return classification_scores(lg, torch.as_tensor(task.query["label"]).long().to(lg.device))
