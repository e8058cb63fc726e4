"""What ``Learner.adapt`` returns, and the guard that decides between adapting and the frozen foundation.

An :class:`AdaptedModel` holds the fast parameters over the shared frozen base, or, when the guard kept the
foundation, the learner's prototype head on frozen features; ``decision`` says which and why. The guard
(:func:`decide`) scores both on the support set's own leave-one-shot-out folds, never the query set.
Functions here take the Learner as an argument (it imports this module, not the reverse).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .functional import head_logits, logits, outputs, pooled, prototypes
from .model import eval_mode
from .tasks.folds import fold_rows, support_folds
from .tasks.task import Task
from .types import Params

__all__ = ["AdaptedModel", "decide", "guard_decision", "guard_settings", "recipe_settings", "whole_support_head"]

PREDICT_BATCH = 64
"""Texts per forward pass when an encoder classifies: batches of similar length (``functional.pooled``), so a
whole test split (CLINC150's 4,500 queries) is neither one huge padded batch nor mostly padding."""


class AdaptedModel:
    """A task-adapted model: the fast parameters over the shared frozen base (or the foundation's head).

    Attributes:
        params: the adapted tensors; with ``use == "foundation"``, the prototype head on frozen features.
        use: ``"meta"`` (the meta-learned init, adapted) or ``"foundation"`` (the frozen base, adapters off).
        decision: which way ``Learner.adapt`` went and why (``"why"``, plus the guard's held-out scores).
        support_losses: the inner loop's support loss at each step (empty for the foundation).
    """

    def __init__(self, learner: Any, params: Params, kind: str, support_losses: list[float], *, use: str = "meta",
                 decision: Optional[dict] = None):
        self.learner = learner
        self.params = params
        self.kind = kind
        self.support_losses = support_losses
        self.use = use
        self.decision = decision or {"use": use}

    @contextlib.contextmanager
    def _model(self):
        """The TaskModel to compute with, in eval mode (no dropout): the learner's, or its frozen base for the
        foundation."""
        with eval_mode(self.learner.model), (self.learner.frozen() if self.use == "foundation"
                                             else contextlib.nullcontext(self.learner.model)) as model:
            yield model

    def _logits(self, model, batch) -> torch.Tensor:
        if self.use == "foundation":
            return head_logits(model, self.params, model.features(batch))
        return logits(model, self.params, batch)

    def loss(self, examples: Mapping[str, Any]) -> float:
        with torch.no_grad(), self._model() as model:
            batch = model.encode(examples, self.kind)
            if self.use == "foundation":
                return float(F.cross_entropy(self._logits(model, batch).float(), batch["label"]))
            return float(self.learner.loss(self.params, batch, self.kind))

    def predict(self, examples: Mapping[str, Any], max_new_tokens: int = 32) -> Any:
        """Class indices (classification), outputs (regression) or greedy completions (generation).

        An encoder classifies ``examples["text"]`` in batches of ``PREDICT_BATCH`` texts of similar length."""
        if self.kind == "generation":
            return self.generate(list(examples["prompt"]), max_new_tokens)
        with torch.no_grad(), self._model() as model:
            if self.kind == "classification" and model.model_type == "encoder":
                return head_logits(model, self.params, pooled(model, self.params, list(examples["text"]),
                                                              PREDICT_BATCH)).argmax(-1)
            batch = model.encode(examples, self.kind)
            if self.kind == "classification":
                return self._logits(model, batch).argmax(-1)
            return outputs(model, self.params, batch)

    def generate(self, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy decoding with the adapted parameters (no sampling, so results are reproducible)."""
        from .generate import greedy

        with eval_mode(self.learner.model):
            return greedy(self.learner.model, self.learner.adapted, self.params, prompts, max_new_tokens)

    def as_module(self) -> nn.Module:
        """Load the adapted tensors into the shared peft module and return it (e.g. for ``.generate``)."""
        if self.use == "foundation":
            raise ValueError("the guard kept the frozen foundation for this task: there are no adapted tensors to "
                             "load; use predict(), or adapt with guard=False")
        self.learner.write_params(self.params)
        return self.learner.adapted.module


def decide(learner: Any, task: Task, *, steps: Optional[int] = None, scale: float = 1.0, folds: Optional[int] = None,
           margin: float = 0.0,
           foundation_scores: Optional[Callable[[Task], dict]] = None,
           on_fold: Optional[Callable[[int, Params, list[float]], None]] = None) -> dict[str, Any]:
    """``"meta"`` (adapt the meta-learned init) or ``"foundation"`` for one classification task, from its support.

    Over ``tasks.support_folds`` (leave-one-shot-out; K >= 2), the init adapts ``steps`` steps (step sizes
    times ``scale``) on each fold's rest and classifies its held-out examples; the foundation classifies
    them too (default: frozen features with this learner's prototype head; ``foundation_scores(pseudo)``
    gives another's accuracy and NLL). The task adapts only if the mean held-out accuracy is higher by more
    than ``margin``; on a tie the lower NLL decides. The query set is never read.

    At ``steps=0`` the folds score the meta-learned init itself (its prototypes of each fold's rest, as a
    0-step adaptation has them): one forward of the support set serves every fold, instead of one
    adaptation per fold. ``on_fold(j, params, support_losses)`` receives each fold's adaptation (not at 0 steps).
    """
    if task.kind != "classification":
        raise ValueError(f"the guard holds out support examples of a classification task, not {task.kind!r}")
    if not 0 <= margin:
        raise ValueError(f"margin={margin!r} is invalid: use a non-negative number")
    if steps == 0 and learner.config.adapter.head == "prototype":
        meta, base = _unadapted_fold_scores(learner, task, folds, foundation_scores)
    else:
        meta, base = [], []
        for j, pseudo in enumerate(support_folds(task, folds)):
            episode = learner.episode(dataclasses.replace(pseudo, query=pseudo.support))  # adaptation sees the rest
            fast, losses = learner.adapt_params(episode, steps, scale)
            if on_fold is not None:
                on_fold(j, fast, losses)
            with torch.no_grad():
                query = learner.model.encode(pseudo.query, "classification")
                meta.append(_scores(logits(learner.model, fast, query), query["label"]))
            base.append(foundation_scores(pseudo) if foundation_scores is not None
                        else _foundation_fold_scores(learner, pseudo))
    acc = {w: _mean([r["accuracy"] for r in rows]) for w, rows in (("meta", meta), ("foundation", base))}
    nll = {w: _mean([r.get("nll", math.nan) for r in rows]) for w, rows in (("meta", meta), ("foundation", base))}
    better = acc["meta"] - acc["foundation"] - margin
    tie = math.isclose(better, 0.0, abs_tol=1e-9)
    use = "meta" if better > 0 and not tie or tie and nll["meta"] <= nll["foundation"] else "foundation"
    return {"use": use, "task_id": task.task_id, "held_out_accuracy": acc, "held_out_nll": nll, "folds": len(meta)}


def _foundation_fold_scores(learner: Any, pseudo: Task) -> dict[str, float]:
    """The frozen foundation with the learner's prototype head of the fold's rest, on its held-out examples."""
    head = learner.foundation_head(pseudo)
    with torch.no_grad(), learner.frozen() as frozen:
        query = frozen.encode(pseudo.query, "classification")
        return _scores(head_logits(frozen, head, frozen.features(query)), query["label"])


def _unadapted_fold_scores(learner: Any, task: Task, folds: Optional[int],
                           foundation_scores: Optional[Callable[[Task], dict]]) -> tuple[list[dict], list[dict]]:
    """``decide``'s fold scores at 0 steps: the init's and the frozen foundation's features of the whole
    support set, computed once, and each fold's prototypes of its rest scored on its held-out rows."""
    labels = torch.as_tensor(task.support["label"])
    rows = fold_rows(task, folds)
    with torch.no_grad():
        feats = {"meta": _support_features(learner.model, learner.init, task)}
        if foundation_scores is None:
            with learner.frozen() as frozen:
                feats["foundation"] = _support_features(frozen, {}, task)
        scores: dict[str, list[dict]] = {"meta": [], "foundation": []}
        for rest, held in rows:
            for who, f in feats.items():
                head = prototypes(learner.model, f[rest], labels[rest], task.n_way)
                scores[who].append(_scores(head_logits(learner.model, head, f[held]), labels[held]))
        if foundation_scores is not None:  # another baseline scores each fold as its own task
            scores["foundation"] = [foundation_scores(pseudo) for pseudo in support_folds(task, folds)]
    return scores["meta"], scores["foundation"]


def _support_features(model: Any, params: Params, task: Task) -> torch.Tensor:
    """Pooled features (rows, hidden) of ``task.support`` under ``params`` (an encoder: in batches by length)."""
    if model.model_type == "encoder" and "text" in task.support:
        return pooled(model, params, list(task.support["text"]), PREDICT_BATCH)
    return outputs(model, params, model.encode(task.support, "classification"))


def guard_decision(learner: Any, task: Task, guard: Union[bool, str, Mapping, None], steps: Optional[int],
                   scale: float, on_fold: Optional[Callable[[int, Params, list[float]], None]] = None) -> dict[str, Any]:
    """Which way ``Learner.adapt`` goes for ``task`` (``"meta"`` or ``"foundation"``) and why, per its ``guard``.

    ``on_fold`` receives each guard fold's adaptation when the guard decides here from the support folds.

    A mapping is a decision made elsewhere for this task (one of ``eval.guard.decide_gated``'s choices): its
    ``"use"`` is applied and the rest kept, so ``adapted.decision`` still shows the held-out scores.
    """
    if isinstance(guard, Mapping):
        if guard.get("use") not in ("meta", "foundation"):
            raise ValueError(f"guard={dict(guard)!r} is invalid: a decision needs use='meta' or 'foundation' (as "
                             "eval.guard.decide_gated returns them)")
        verdict = guard.get("verdict")
        if guard.get("gate") != "family":
            gate = "made for this task"
        elif verdict:
            gate = (f"pooled over {verdict['tasks']} tasks: held-out accuracy adapted minus foundation "
                    f"{verdict['held_out_difference']:+.3f} ± {verdict['ci95']:.3f}")
        else:
            gate = "pooled over many tasks"
        return {**guard, "why": f"a decision given to adapt ({gate})"}
    if guard in ("meta", "foundation"):
        return {"use": guard, "why": "a verdict given to adapt (guard=...)"}
    if guard not in (None, True, False):
        raise ValueError(f"guard={guard!r} is invalid: use True, False, 'meta', 'foundation' or a decision "
                         "(eval.guard.decide_gated)")
    recipe_guard = learner.recipe.guard if learner.recipe else True
    if guard is False or (guard is None and not recipe_guard):
        return {"use": "meta", "why": "unguarded (guard=False)"}
    if task.kind != "classification" or learner.config.adapter.head != "prototype":
        if guard:
            raise ValueError("guard=True compares with the frozen foundation's prototype classifier, which needs a "
                             "classification task and adapter.head='prototype'; pass guard=False")
        return {"use": "meta", "why": f"no guard for a {task.kind} task"}
    k = _min_shots(task)
    if k < 2:
        if guard:
            raise ValueError(f"guard=True holds support examples out, which needs K >= 2 per class (this support "
                             f"has {k}); pass guard=False, or a verdict ('meta' or 'foundation')")
        return {"use": "meta", "why": "K = 1: no support example to hold out, so the guard cannot decide"}
    decision = decide(learner, task, **guard_settings(learner, scale=scale, adapt_steps=steps), on_fold=on_fold)
    acc = decision["held_out_accuracy"]
    return {**decision, "why": f"held-out support accuracy: adapted {acc['meta']:.3f}, foundation "
                               f"{acc['foundation']:.3f} over {decision['folds']} fold(s)"}


def whole_support_head(learner: Any, params: Params, task: Task) -> Params:
    """A guard fold's adaptation made the task's (``Recipe.reuse_fold``): its adapted tensors, with the prototype
    head recomputed from the whole support set under them, so the held-out shots still place the prototypes."""
    with torch.no_grad():
        feats = _support_features(learner.model, params, task)
        head = prototypes(learner.model, feats, torch.as_tensor(task.support["label"]), task.n_way)
    return {**params, **head}


def recipe_settings(learner: Any, steps: Optional[int] = None, scale: Optional[float] = None,
                    folds: Optional[int] = None, margin: Optional[float] = None) -> dict[str, Any]:
    """The test-time settings ``Learner.adapt`` and its guard use: each one given, else the learner's recipe's
    (``eval.tune_recipe``), else ``inner.steps`` steps at the meta-trained step sizes, K folds and margin 0."""
    recipe = learner.recipe

    def pick(given: Any, field: str, default: Any) -> Any:
        return given if given is not None else getattr(recipe, field) if recipe else default

    return {"steps": pick(steps, "steps", learner.config.inner.steps), "scale": pick(scale, "scale", 1.0),
            "folds": pick(folds, "folds", None), "margin": pick(margin, "margin", 0.0)}


def guard_settings(learner: Any, steps: Optional[int] = None, scale: Optional[float] = None,
                   folds: Optional[int] = None, margin: Optional[float] = None, *,
                   adapt_steps: Optional[int] = None) -> dict[str, Any]:
    """``decide``'s settings for the guard ``adapt`` runs: as ``recipe_settings``, the folds adapting ``steps``
    steps if given, else the recipe's ``guard_steps`` where it sets them, else ``adapt_steps`` (the steps
    ``adapt`` was given), else the recipe's steps."""
    recipe_steps = learner.recipe.guard_steps if learner.recipe is not None else None
    steps = next((s for s in (steps, recipe_steps, adapt_steps) if s is not None), None)
    return recipe_settings(learner, steps, scale, folds, margin)


def _scores(lg: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Accuracy and NLL of logits (n, n_way) against labels (n,), as ``eval.metrics.classification_scores``."""
    lg = lg.float()
    return {"accuracy": float((lg.argmax(-1) == true).double().mean()), "nll": float(F.cross_entropy(lg, true))}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _min_shots(task: Task) -> int:
    """The fewest support examples of any class, class-name rows (``meta['name_rows']``) not counted."""
    names = set(task.meta.get("name_rows", ()))
    counts: dict[int, int] = {}
    for i, y in enumerate(torch.as_tensor(task.support["label"]).tolist()):
        if i not in names:
            counts[int(y)] = counts.get(int(y), 0) + 1
    return min(counts.values()) if counts else 0
