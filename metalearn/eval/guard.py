"""A guard against forgetting: per target family, keep the meta-learned init only where it beats the foundation.

Meta-learning on one family can make a model worse on another (catastrophic forgetting, in the
meta-learning setting). The guard decides per family, on that family's **validation** split (never
its test split), between the meta-learned adapters and the frozen foundation (adapters off; for an
encoder, nearest prototypes on its own features): it evaluates both on the same validation episodes
and keeps the meta-learned init only if its mean score is at least the foundation's plus ``margin``.
This is the interpolation ``alpha * adapters`` restricted to ``alpha in {0, 1}``: exact at both ends
for any adapter set, soft prompts included (a soft prompt has no "halfway on").

    choice = guard.choose(learner, family, foundation="prototypes", steps=3)
    choice["use"]  # "meta" or "foundation"; choice["val"] holds both validation scores
"""
from __future__ import annotations

from typing import Any, Optional

from ..learner import Learner
from .evaluate import evaluate
from .metrics import HIGHER_IS_BETTER


class ValidationView:
    """A family whose ``test`` split is another family's ``val`` split (so the harness scores on val)."""

    def __init__(self, family: Any):
        self.family = family
        self.kind = family.kind

    def sample(self, split: str, rng):
        return self.family.sample("val", rng)

    def __repr__(self) -> str:
        return f"ValidationView({self.family!r})"


def choose(learner: Learner, family: Any, *, foundation: str = "zero_shot", steps: int = 0, episodes: int = 30,
           metric: Optional[str] = None, margin: float = 0.0, seed: int = 0,
           lr_grid=None) -> dict[str, Any]:
    """Pick ``"meta"`` or ``"foundation"`` for ``family`` from scores on its validation split.

    Args:
        learner: the meta-learned init.
        family: the target family; only its ``val`` split is sampled.
        foundation: the frozen baseline that stands for "adapters off" (``"zero_shot"``, or
            ``"prototypes"`` for an encoder with a cosine head).
        steps: inner steps the meta-learned init adapts for, as it will at test time.
        episodes: validation episodes scored (the same ones for both).
        metric: what to compare (default: the primary metric of the family's kind).
        margin: how much better the meta-learned init must be to be kept.
    """
    if not 0 <= margin:
        raise ValueError(f"margin={margin!r} is invalid: use a non-negative number")
    results = evaluate({"meta": learner}, ValidationView(family), baselines=[foundation], steps=[steps],
                       episodes=episodes, seed=seed + 7919, lr_grid=lr_grid, progress=False,
                       generate=metric not in ("nll", "accuracy"))
    metric = metric or results.settings["primary_metric"]
    meta, _ = results.score("meta", metric, steps)
    base, _ = results.score(foundation, metric, steps)
    better = (meta - base) if HIGHER_IS_BETTER.get(metric, True) else (base - meta)
    return {"use": "meta" if better >= margin else "foundation", "metric": metric,
            "val": {"meta": meta, "foundation": base}, "episodes": episodes, "foundation": foundation}


def check_held_out(train_family: Any, target_family: Any, split: str = "test") -> None:
    """Refuse a transfer target whose ``split`` classes overlap the meta-training classes, naming them."""
    lister_train = getattr(train_family, "classes", None)
    lister_target = getattr(target_family, "classes", None)
    if not (callable(lister_train) and callable(lister_target)):
        return  # families without class lists (procedural, instruction): nothing to compare
    seen = set(lister_train("train"))
    overlap = sorted(seen & set(lister_target(split)))
    if overlap:
        raise ValueError(f"the transfer target {target_family!r} is not held out: its {split} classes "
                         f"{overlap[:10]}{' ...' if len(overlap) > 10 else ''} were meta-trained on; use classes "
                         "the learner never saw (another split or data set)")
