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

__all__ = ["DEFAULT_RECIPE_STEPS", "tune_recipe"]

DEFAULT_RECIPE_STEPS = (1, 2, 3, 5, 10)
"""Step counts the recipe chooses from (0 steps, the init itself, is what the guard compares against)."""


def tune_recipe(learner: Learner, family: Any, *, steps: Sequence[int] = DEFAULT_RECIPE_STEPS,
                lr_grid: Sequence[float] = DEFAULT_LR_GRID, val_episodes: int = 32, seed: int = 0,
                guard: bool = True, folds: Optional[int] = None, margin: float = 0.0, workers: int = 1) -> Recipe:
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
        workers: forked processes sharing the validation tasks.

    Returns:
        The recipe, also set as ``learner.recipe`` (``learner.save`` writes it). Ties between step counts go
        to the fewer steps: they are cheaper and forget less.
    """
    if not steps or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
        raise ValueError(f"steps={steps!r} is invalid: give step counts >= 1 to choose from, e.g. (1, 3, 5, 10)")
    if not lr_grid or not all(isinstance(g, (int, float)) and g > 0 and math.isfinite(g) for g in lr_grid):
        raise ValueError(f"lr_grid={lr_grid!r} is invalid: give positive step-size multipliers, e.g. (0.3, 1, 3)")
    if not isinstance(val_episodes, int) or isinstance(val_episodes, bool) or val_episodes < 1:
        raise ValueError(f"val_episodes={val_episodes!r} is invalid: use a positive number of validation tasks")
    check_workers(workers)
    Recipe(steps=1, guard=guard, folds=folds, margin=margin)  # the guard settings, checked before any work
    tasks = sample_tasks(family, "val", val_episodes, seed)
    with evaluation_mode([learner]):
        episodes = [(task, support_episode(learner, task)) for task in tasks]
        tuned = tune(learner, episodes, sorted(set(steps)), list(lr_grid), workers=workers)
    metric = next(iter(tuned.values()))[1]
    sign = 1.0 if metrics.HIGHER_IS_BETTER[metric] else -1.0
    best = max(sorted(tuned), key=lambda s: sign * tuned[s][2][tuned[s][0]])  # first (fewest steps) among ties
    scale, _, scores, _ = tuned[best]
    chosen_on = {"metric": metric, "val_episodes": val_episodes, "seed": seed, "lr_grid": [float(g) for g in lr_grid],
                 "val_scores": {str(s): float(t[2][t[0]]) for s, t in sorted(tuned.items())},
                 "scales": {str(s): float(t[0]) for s, t in sorted(tuned.items())}}
    learner.recipe = Recipe(steps=best, scale=float(scale), guard=guard, folds=folds, margin=margin,
                            chosen_on=chosen_on)
    return learner.recipe
