"""Adaptation for evaluation: first-order inner loops from a learner's init, read at several step counts.

One trajectory serves every step count that shares a step size: scores after 1, 2, 5 and 10 steps
come from the parameters of one 10-step run at those points, instead of four runs (18 steps). The
parameters after k steps of a longer run are those of a k-step run (the same operations in the same
order), so the numbers do not change (tested against separate runs). No meta-gradient is needed here,
so a prototype head's support forward at the init also serves the first inner step (one pass of the
1 + 2k of a k-step loop, the same numbers). Episodes can also be adapted
many at a time, ``episode_batch`` at once (``Learner.inner_adapt_batched``: one ``vmap`` over stacked
support sets, as in meta-training), where their support sets stack; that pays on accelerators and
changes results only by floating-point rounding.

The inner learning rate of each step count is picked on validation episodes (``tune``): a grid of
multipliers of the learner's own step sizes, each run once to the largest step count, scored by the
metric the harness reports.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..inner.batched import stack_batches
from ..learner import Episode, Learner
from ..tasks.task import Task
from ..types import Params
from . import metrics
from .score import score_params
from .workers import forked_map

__all__ = ["trajectories", "trajectory", "tune"]

Snapshots = dict[int, Params]
"""Detached parameters after each requested number of inner steps."""


def trajectory(learner: Learner, episode: Episode, counts: Sequence[int], scale: float = 1.0,
               reuse: bool = True) -> Snapshots:
    """The parameters after each of ``counts`` inner steps, all from one run of ``max(counts)`` steps.

    ``reuse``: a prototype head's support forward also serves the first step (``Learner.inner_adapt``
    with ``meta_gradient=False``: one pass fewer, the same numbers); off, the path as first written.
    """
    wanted, kept = set(counts), {}

    def keep(step: int, params: Params) -> None:
        if step in wanted:
            kept[step] = {n: t.detach() for n, t in params.items()}

    with torch.enable_grad():
        learner.scaled(scale).inner_adapt(episode, steps=max(counts), order="first", on_step=keep,
                                             meta_gradient=not reuse)
    return kept


def trajectories(learner: Learner, episodes: Sequence[Episode], counts: Sequence[int], scale: float = 1.0,
                 episode_batch: int = 1, reuse: bool = True) -> list[Snapshots]:
    """``trajectory`` of each episode; ``episode_batch`` > 1 adapts that many at once where their supports stack."""
    out: list[Snapshots] = []
    for start in range(0, len(episodes), max(episode_batch, 1)):
        group = list(episodes[start:start + max(episode_batch, 1)])
        batched = _batched(learner, group, counts, scale) if len(group) > 1 else None
        out += batched if batched is not None else [trajectory(learner, e, counts, scale, reuse) for e in group]
    return out


def _batched(learner: Learner, episodes: list[Episode], counts: Sequence[int], scale: float) -> Any:
    """Snapshots of a group of episodes adapted as one batched computation, or None if they cannot stack."""
    kind, n_way = episodes[0].kind, episodes[0].n_way
    if learner.config.inner.clip_norm is not None or any(e.kind != kind or e.n_way != n_way for e in episodes):
        return None
    support, _ = stack_batches([e.support for e in episodes])
    if support is None:
        return None
    view, tasks = learner.scaled(scale), len(episodes)
    init = {n: t.detach().unsqueeze(0).expand(tasks, *t.shape).clone().requires_grad_(True)
            for n, t in learner.init.items()}
    wanted, kept = set(counts), {}

    def keep(step: int, params: Params) -> None:
        if step in wanted:
            kept[step] = {n: t.detach() for n, t in params.items()}

    with torch.enable_grad():
        view.inner_adapt_batched(support, kind, n_way, init, steps=max(counts), order="first", on_step=keep)
    return [{s: {n: t[i] for n, t in params.items()} for s, params in kept.items()} for i in range(tasks)]


def tune(learner: Learner, episodes: Sequence[tuple[Task, Episode]], counts: Sequence[int], grid: Sequence[float],
         reuse: bool = True, episode_batch: int = 1,
         workers: int = 1) -> dict[int, tuple[float, str, dict[float, float], dict[float, float]]]:
    """Per step count: the grid multiplier with the best mean val score, and (multiplier, metric, scores, losses).

    ``episodes`` are (val task, its support-only episode) pairs. ``reuse``: one trajectory per multiplier
    serves every step count (and ``trajectory``'s shared forward); otherwise each count is adapted from
    scratch (the same numbers, slower).
    The score is the metric the harness reports (``metrics.PRIMARY``) when it needs no decoding, else the
    NLL: a query-loss choice can pick a step size that lowers the loss and ruins accuracy. Ties go to the
    lower loss, then to the multiplier closest to 1; non-finite results rank last. ``workers`` forked
    processes share the episodes (``workers.forked_map``).
    """
    rows: dict[int, dict[float, list[dict]]] = {s: {} for s in counts}
    size = max(episode_batch, 1)
    chunks = [list(episodes[i:i + size]) for i in range(0, len(episodes), size)]
    for scale in grid:
        for run in ([list(counts)] if reuse else [[s] for s in counts]):
            def scored(chunk: list, run: list[int] = run, scale: float = scale) -> list[list[dict]]:
                snapshots = trajectories(learner, [support for _, support in chunk], run, scale, episode_batch, reuse)
                return [[score_params(learner, snap[s], task, generate=False) for s in run]
                        for snap, (task, _) in zip(snapshots, chunk)]

            per_episode = [scores for part in forked_map(scored, chunks, workers) for scores in part]
            for j, s in enumerate(run):
                rows[s][float(scale)] = [scores[j] for scores in per_episode]
    return {s: _choose(by_scale, episodes[0][0].kind) for s, by_scale in rows.items()}


def _choose(rows: dict[float, list[dict]], kind: str) -> tuple[float, str, dict[float, float], dict[float, float]]:
    """The best multiplier from each multiplier's per-episode scores (see ``tune``)."""
    first = next(iter(rows.values()))[0]
    metric = metrics.PRIMARY[kind]
    metric = metric if metric in first else "nll"
    loss = "mse" if "mse" in first else "nll"
    worst = -math.inf if metrics.HIGHER_IS_BETTER[metric] else math.inf
    scores = {g: _finite_mean([r[metric] if math.isfinite(r[loss]) else worst for r in rs], worst)
              for g, rs in rows.items()}  # a diverged episode (non-finite loss) scores worst, whatever its argmax
    losses = {g: _finite_mean([r[loss] for r in rs], math.inf) for g, rs in rows.items()}
    sign = -1.0 if metrics.HIGHER_IS_BETTER[metric] else 1.0
    best = min(scores, key=lambda g: (sign * scores[g], losses[g], abs(math.log(g))))
    return best, metric, scores, losses


def _finite_mean(values: list[float], otherwise: float) -> float:
    mean = float(np.mean(values))
    return mean if math.isfinite(mean) else otherwise
