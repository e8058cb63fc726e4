"""``tune_recipe``: choose ``Learner.adapt``'s test-time step count and step size on validation tasks.

The same search ``evaluate`` runs (``adaptation.tune``: a grid of multipliers of the learner's own step
sizes, scored on the family's **val** split by the metric the harness reports), over several step counts;
the best (step count, multiplier) pair becomes the learner's :class:`~metalearn.config.Recipe`, saved with
it, so that ``metalearn.load(dir).adapt(support)`` runs the tuned, guarded recipe without being told.

    learner = metalearn.fit(family, ...)
    metalearn.tune_recipe(learner, family)     # learner.recipe: steps, scale, guard
    learner.save("init/")                      # the recipe travels with it
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

from ..config import Recipe
from ..learner import Learner
from ..views import evaluation_mode
from . import metrics
from .adaptation import tune
from .evaluate import DEFAULT_LR_GRID
from .inputs import sample_tasks
from .runner import support_episode
from .workers import check_workers

__all__ = ["DEFAULT_RECIPE_STEPS", "check_recipe_options", "fewest_within", "tune_recipe"]

DEFAULT_RECIPE_STEPS = (1, 2, 3, 5, 10)
"""Step counts the recipe chooses from (0 steps, the init itself, is what the guard compares against)."""


def tune_recipe(learner: Learner, family: Any, *, steps: Sequence[int] = DEFAULT_RECIPE_STEPS,
                lr_grid: Sequence[float] = DEFAULT_LR_GRID, val_episodes: int = 32, seed: int = 0,
                guard: bool = True, folds: Optional[int] = None, margin: float = 0.0, tolerance: float = 0.0,
                guard_steps: Optional[int] = None, reuse_fold: bool = False, workers: int = 1) -> Recipe:
    """Choose the test-time step count and step-size multiplier on ``family``'s val split; set ``learner.recipe``.

    Args:
        learner: the meta-learned learner (``metalearn.fit``'s result, or ``metalearn.load``'s).
        family: the task family; its ``val`` split is sampled, its test split never.
        steps: step counts to choose from (each >= 1).
        lr_grid: multipliers of the learner's inner step sizes tried at every step count.
        val_episodes: validation tasks (the same ones for every step count and multiplier).
        seed: seeds the validation tasks (``evaluate`` uses ``seed + 1`` for its own; pass that to match).
        guard: whether ``adapt`` guards classification tasks at K >= 2 (see ``Learner.adapt``).
        folds: the guard's support folds (None: K).
        margin: the held-out accuracy adapting must gain over the foundation to be kept.
        tolerance: take the fewest steps whose validation score is within this much of the best (metric units,
            e.g. 0.01 = one point of accuracy). Each step costs as much as the first, and 32 validation tasks
            cannot tell a point apart: on FewRel 5-way 1-shot, 1 step scored 0.719 and 10 steps 0.731.
        guard_steps: inner steps of each guard fold (None: the chosen steps; 0: the folds score the
            meta-learned init unadapted, one forward of the support set for all of them).
        reuse_fold: a task the guard adapts keeps its first fold's adaptation (prototypes from all K shots)
            instead of adapting again on the whole support set (``Recipe.reuse_fold``).
        workers: forked processes sharing the validation tasks.

    Returns:
        The recipe, also set as ``learner.recipe`` (``learner.save`` writes it). Ties between step counts (within
        ``tolerance``) go to the fewer steps: they are cheaper and forget less.
    """
    check_recipe_options(steps=steps, lr_grid=lr_grid, val_episodes=val_episodes, seed=seed, guard=guard,
                         folds=folds, margin=margin, tolerance=tolerance, guard_steps=guard_steps,
                         reuse_fold=reuse_fold, workers=workers)
    tasks = sample_tasks(family, "val", val_episodes, seed)
    with evaluation_mode([learner]):
        episodes = [(task, support_episode(learner, task)) for task in tasks]
        tuned = tune(learner, episodes, sorted(set(steps)), list(lr_grid), workers=workers)
    metric = next(iter(tuned.values()))[1]
    best = fewest_within({s: t[2][t[0]] for s, t in tuned.items()}, metrics.HIGHER_IS_BETTER[metric], tolerance)
    scale, _, scores, _ = tuned[best]
    chosen_on = {"metric": metric, "val_episodes": val_episodes, "seed": seed, "lr_grid": [float(g) for g in lr_grid],
                 "tolerance": float(tolerance),
                 "val_scores": {str(s): float(t[2][t[0]]) for s, t in sorted(tuned.items())},
                 "scales": {str(s): float(t[0]) for s, t in sorted(tuned.items())}}
    learner.recipe = Recipe(steps=best, scale=float(scale), guard=guard, folds=folds, margin=margin,
                            guard_steps=guard_steps, reuse_fold=reuse_fold, chosen_on=chosen_on)
    return learner.recipe


def check_recipe_options(*, steps: Sequence[int] = DEFAULT_RECIPE_STEPS, lr_grid: Sequence[float] = DEFAULT_LR_GRID,
                         val_episodes: int = 32, seed: int = 0, guard: bool = True, folds: Optional[int] = None,
                         margin: float = 0.0, tolerance: float = 0.0, guard_steps: Optional[int] = None,
                         reuse_fold: bool = False, workers: int = 1) -> None:
    """Raise ``ValueError`` naming the fix if ``tune_recipe`` would refuse these options (before any work)."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} is invalid: use an integer")
    if not steps or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
        raise ValueError(f"steps={steps!r} is invalid: give step counts >= 1 to choose from, e.g. (1, 3, 5, 10)")
    if not lr_grid or not all(isinstance(g, (int, float)) and g > 0 and math.isfinite(g) for g in lr_grid):
        raise ValueError(f"lr_grid={lr_grid!r} is invalid: give positive step-size multipliers, e.g. (0.3, 1, 3)")
    if not isinstance(val_episodes, int) or isinstance(val_episodes, bool) or val_episodes < 1:
        raise ValueError(f"val_episodes={val_episodes!r} is invalid: use a positive number of validation tasks")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance={tolerance!r} is invalid: use a finite score difference >= 0, e.g. 0.01")
    check_workers(workers)
    Recipe(steps=1, guard=guard, folds=folds, margin=margin, guard_steps=guard_steps,
           reuse_fold=reuse_fold)  # the guard settings


def fewest_within(scores: dict[int, float], higher_is_better: bool, tolerance: float = 0.0) -> int:
    """The fewest steps whose score is within ``tolerance`` of the best step count's (NaN scores never are).

    >>> scores = {1: 0.719, 5: 0.730, 10: 0.731}
    >>> fewest_within(scores, True), fewest_within(scores, True, 0.01), fewest_within(scores, True, 0.015)
    (10, 5, 1)
    """
    sign = 1.0 if higher_is_better else -1.0
    finite = {s: sign * v for s, v in scores.items() if math.isfinite(v)}
    if not finite:
        return min(scores)
    best = max(finite.values())
    return min(s for s, v in finite.items() if v >= best - tolerance)
