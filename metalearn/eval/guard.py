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

A family's validation classes can be a poor stand-in for its test classes (FewRel: +6.4 points on 5
validation relations, -3.9 on the 6 test ones). With K >= 2 shots the guard can instead decide **per
task, from that task's support set alone** (:func:`decide`): fold j holds out the j-th support example of
every class, the meta-learned init adapts on the rest (as it will on the full support set) and both it
and the frozen foundation classify the held-out examples; the task keeps the adapted model only if it
wins there. :func:`combine` turns those per-task choices into a guarded method's results on the very
same test episodes (so its paired differences are exact). At K = 1 there is nothing to hold out: use
:func:`choose` on a validation split (big enough to predict the test split). A handful of held-out
support examples cannot see a small family-wide loss, so :func:`decide_gated` pools the folds of all the
tasks being decided into one verdict for the family (all adapt, none adapt, or each task decides).
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence, Union

from .. import guarded
from ..learner import Learner
from ..tasks.folds import support_folds
from ..tasks.task import Task
from ..views import evaluation_mode
from . import baselines as bl
from .evaluate import evaluate
from .metrics import HIGHER_IS_BETTER, mean_ci
from .results import EvalResults, paired_differences, summarize
from .workers import check_workers, forked_map

__all__ = ["TargetGate", "ValidationView", "check_held_out", "choose", "combine", "decide", "decide_gated",
           "decide_tasks", "follow", "support_folds"]


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
           lr_grid=None, scale: float = 1.0, workers: int = 1) -> dict[str, Any]:
    """Pick ``"meta"`` or ``"foundation"`` for ``family`` from scores on its validation split.

    Args:
        learner: the meta-learned init.
        family: the target family; only its ``val`` split is sampled.
        foundation: the frozen baseline that stands for "adapters off" (``"zero_shot"``, or
            ``"prototypes"`` for an encoder with a cosine head).
        steps: inner steps the meta-learned init adapts for, as it will at test time.
        episodes: validation episodes scored (the same ones for both).
        metric: what to compare (default: the primary metric of the family's kind).
        margin: how much better the meta-learned init must be to be kept (strictly: a tie keeps the foundation).
        scale: multiplier of the learner's inner step sizes (e.g. the one ``evaluate`` chose for ``steps``).
        workers: forked processes sharing the validation episodes (as in ``evaluate``).
    """
    if not 0 <= margin:
        raise ValueError(f"margin={margin!r} is invalid: use a non-negative number")
    results = evaluate({"meta": learner.scaled(scale)}, ValidationView(family), baselines=[foundation], steps=[steps],
                       episodes=episodes, seed=seed + 7919, lr_grid=lr_grid, progress=False,
                       generate=metric not in ("nll", "accuracy"), workers=workers)
    metric = metric or results.settings["primary_metric"]
    meta, _ = results.score("meta", metric, steps)
    base, _ = results.score(foundation, metric, steps)
    better = (meta - base) if HIGHER_IS_BETTER.get(metric, True) else (base - meta)
    # The init must be better by more than ``margin``: a tie keeps the foundation, which costs no adaptation
    # and cannot forget (a 64-way HWU64 target tied on its one validation task and then lost 1.3 points).
    return {"use": "meta" if better > margin else "foundation", "metric": metric,
            "val": {"meta": meta, "foundation": base}, "episodes": episodes, "foundation": foundation}


def check_held_out(train_family: Any, target_family: Any, split: str = "test") -> None:
    """Refuse a transfer target whose ``split`` classes overlap the meta-training classes, naming them.

    For a mixture (``tasks.Mixture``) each source that is the target's data set (same ``name``) is checked:
    class names are compared within a data set only (CLINC150 and HWU64 both have a ``play_music``).
    """
    sources = getattr(train_family, "sources", None)
    if isinstance(sources, dict):
        for source in sources.values():
            if getattr(source, "name", None) == getattr(target_family, "name", None):
                check_held_out(source, target_family, split)
        return
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


# ---------------------------------------------------------------- per task, from the support set alone


def decide(learner: Learner, task: Task, *, steps: int, scale: float = 1.0, foundation: str = "zero_shot",
           folds: Optional[int] = None, margin: float = 0.0) -> dict[str, Any]:
    """``"meta"`` or ``"foundation"`` for one classification task, from its support set (``guarded.decide``).

    The foundation is baseline ``foundation`` of ``metalearn.eval.baselines`` (``"zero_shot"``: frozen
    features with the learner's prototype head, ``"prototypes"``, ``"linear_probe"``), scored on the same
    held-out support examples. The query set is never read.
    """
    return guarded.decide(learner, task, steps=steps, scale=scale, folds=folds, margin=margin,
                          foundation_scores=lambda pseudo: bl.frozen_scores(foundation, learner, pseudo,
                                                                            generate=False))


def decide_tasks(learner: Learner, tasks: Sequence[Task], workers: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`decide` for every task, with the model in evaluation mode (as ``evaluate`` runs it).

    ``workers`` forked processes share the tasks (``workers.forked_map``; the same decisions). Each choice
    records the wall ``seconds`` its decision took (its folds' adaptations and scoring).
    """
    check_workers(workers)

    def one(task: Task) -> dict[str, Any]:
        start = time.perf_counter()
        choice = decide(learner, task, **kwargs)
        return {**choice, "seconds": time.perf_counter() - start}

    with evaluation_mode([learner]):
        return list(forked_map(one, list(tasks), workers))


def decide_gated(learner: Learner, tasks: Sequence[Union[Task, Mapping[str, Any]]], *, steps: Optional[int] = None,
                 scale: Optional[float] = None, foundation: str = "zero_shot", folds: Optional[int] = None,
                 margin: Optional[float] = None, workers: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`decide` for every task, behind a verdict for the whole family pooled over those tasks' support folds.

    One task's folds hold out a handful of examples (10 at 5-way with 2 folds), so its accuracy difference
    has a standard error of ~20 points: against a family-wide difference of a point or two, a per-task
    decision alone is close to a coin flip and mixes a worse init into about half the tasks. Pooled over
    the tasks (600 of them: 6,000 held-out predictions) the same fold scores measure that difference on the
    family's own classes, which a validation split of other classes may not (HuffPost: +1.5 points on its
    validation categories, -2.0 on its test ones). The verdict, from the pooled difference and its 95%
    interval: every task keeps the foundation unless the difference is above ``margin``; every task adapts
    when the whole interval is above ``margin`` (per-task noise would only mix the foundation back in: on
    FewRel 5-way 5-shot, +2.5 ± 0.6 pooled, per-task decisions cost 0.5 points); in between each task keeps
    its own decision. Only support sets are read. Returns (one choice per task, the verdict).

    ``tasks`` may be a user's support sets (mappings with ``text`` and ``label``): then each choice goes to
    ``learner.adapt(support, guard=choice)``. ``steps``, ``scale``, ``folds`` and ``margin`` default to the
    learner's recipe (``tune_recipe``), the ones ``adapt`` uses.
    """
    if not tasks:
        raise ValueError("decide_gated pools the verdict over tasks' support folds and was given none: pass the "
                         "support sets (or tasks) of the target's tasks")
    settings = guarded.guard_settings(learner, steps, scale, folds, margin)
    tasks = _as_tasks(tasks)
    choices = decide_tasks(learner, tasks, workers=workers, foundation=foundation, **settings)
    verdict = pooled_verdict(choices, settings["margin"])
    if verdict["use"] != "per task":
        choices = [follow(verdict, c) for c in choices]
    return choices, verdict


def pooled_verdict(choices: Sequence[Mapping[str, Any]], margin: float = 0.0) -> dict[str, Any]:
    """:func:`decide_gated`'s verdict from tasks' own decisions (``guarded.decide``'s, with held-out accuracies).

    The held-out difference, adapted minus foundation, pooled over the tasks with its 95% interval:
    ``"foundation"`` unless it is above ``margin``, ``"meta"`` when the whole interval is, else ``"per task"``.
    """
    mean, ci = mean_ci([c["held_out_accuracy"]["meta"] - c["held_out_accuracy"]["foundation"] for c in choices])
    use = "foundation" if mean <= margin else "meta" if mean - ci > margin else "per task"
    return {"use": use, "held_out_difference": mean, "ci95": ci, "tasks": len(choices)}


def follow(verdict: Mapping[str, Any], choice: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A task's choice that follows a settled family ``verdict`` (its ``"use"``), for ``adapt(guard=...)``.

    ``choice``: the task's own decision, whose held-out scores are kept beside the verdict (None: a task that
    had no folds).
    """
    return {**(choice or {}), "use": verdict["use"], "gate": "family", "verdict": dict(verdict)}


class TargetGate:
    """The guard's verdict for one target, settled online as the target's tasks arrive.

    :func:`decide_gated` pools the tasks a user has at hand, once. A gate takes them as they come: each
    task decides on its own support folds (``adapt``'s per-task guard) and adds its held-out difference,
    adapted minus foundation, to the pool. After ``first_look`` tasks, and again each time their number
    doubles (by default 8, 16, 32, ...), the pooled difference is tested; look j uses the level
    ``1 - alpha / 2 ** (j + 1)``, so that however many looks are taken, the chance of a wrong verdict stays
    below ``alpha`` (Bonferroni over the looks). Once the interval lies above ``margin`` every later task
    adapts, and once it lies at or below it every later task keeps the foundation, without folds: one
    adaptation per task instead of one per fold plus one. Until then each task follows its own folds (the
    task whose folds settle the verdict follows the verdict). Only support sets are read.

        gate = guard.TargetGate(learner)            # the recipe's steps, step size, folds and margin
        for support in stream:                      # {"text": [...], "label": [...]} per task
            adapted = learner.adapt(support, guard=gate.choose(support))
        gate.verdict                                # None while unsettled

    ``choose_many(supports)`` decides a batch in order, the same choices as one at a time; with ``workers`` the
    tasks up to each look share forked processes.
    """

    def __init__(self, learner: Learner, *, foundation: str = "zero_shot", steps: Optional[int] = None,
                 scale: Optional[float] = None, folds: Optional[int] = None, margin: Optional[float] = None,
                 first_look: int = 8, alpha: float = 0.05, workers: int = 1):
        if first_look < 2:
            raise ValueError(f"first_look={first_look!r} is invalid: the pooled interval needs at least 2 tasks")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha={alpha!r} is invalid: give the chance of a wrong verdict, e.g. 0.05")
        check_workers(workers)
        self.learner, self.foundation, self.workers = learner, foundation, workers
        self.settings = guarded.guard_settings(learner, steps, scale, folds, margin)
        self.first_look, self.alpha = first_look, alpha
        self.seen = 0
        self.differences: list[float] = []
        self.verdict: Optional[dict[str, Any]] = None

    def choose(self, support: Union[Task, Mapping[str, Any]]) -> dict[str, Any]:
        """The choice for one task, for ``learner.adapt(support, guard=choice)``; it may settle the verdict."""
        return self.choose_many([support])[0]

    def choose_many(self, supports: Sequence[Union[Task, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """The choices for tasks in arrival order; each records the wall ``seconds`` of its folds (0 without)."""
        tasks = _as_tasks(supports, offset=self.seen)
        self.seen += len(tasks)
        choices: list[dict[str, Any]] = []
        while len(choices) < len(tasks):
            if self.verdict is not None:
                choices += [follow(self.verdict, {"task_id": t.task_id, "seconds": 0.0})
                            for t in tasks[len(choices):]]
                break
            look_at = self._next_look()
            batch = tasks[len(choices):len(choices) + look_at - len(self.differences)]
            decided = decide_tasks(self.learner, batch, workers=self.workers, foundation=self.foundation,
                                   **self.settings)
            self.differences += [c["held_out_accuracy"]["meta"] - c["held_out_accuracy"]["foundation"]
                                 for c in decided]
            if len(self.differences) == look_at and self._look():  # the task that settles it follows it
                decided[-1] = follow(self.verdict, decided[-1])
            choices += decided
        return choices

    def _next_look(self) -> int:
        """The number of tasks at the next look: ``first_look`` times a power of 2, more than have been pooled."""
        n = self.first_look
        while n <= len(self.differences):
            n *= 2
        return n

    def _look(self) -> bool:
        """Test the pooled difference at this look's level; settle the verdict if its interval clears the margin."""
        look = (len(self.differences) // self.first_look).bit_length() - 1
        confidence = 1 - self.alpha / 2 ** (look + 1)
        mean, ci = mean_ci(self.differences, confidence)
        margin = self.settings["margin"]
        use = "meta" if mean - ci > margin else "foundation" if mean + ci <= margin else None
        if use is not None:  # its 95% interval too, as decide_gated's verdicts have
            self.verdict = {"use": use, "held_out_difference": mean, "ci95": mean_ci(self.differences)[1],
                            "confidence": confidence, "half_width": ci, "tasks": len(self.differences)}
        return use is not None


def _as_tasks(tasks: Sequence[Union[Task, Mapping[str, Any]]], offset: int = 0) -> list[Task]:
    """Tasks as given, and support sets (mappings) as tasks whose query is their support (never read)."""
    return [t if isinstance(t, Task) else Task(t, t, "classification", task_id=f"support {offset + i}")
            for i, t in enumerate(tasks)]


def combine(results: EvalResults, meta: str, foundation: str, steps: int, choices: Sequence[dict],
            name: Optional[str] = None) -> EvalResults:
    """``results`` plus a guarded method: on test episode i, ``meta``'s scores if ``choices[i]["use"] == "meta"``.

    ``choices`` are :func:`decide`'s (one per test episode, same order; their task ids are checked) or one
    family-level :func:`choose` result repeated. Summaries and paired differences are recomputed, so the
    guarded method is paired with every other on the same episodes.
    """
    name = name or f"{meta}+guard"
    picked = {w: {(r["shots"], r["episode"]): r for r in results.records if r["method"] == w and r["steps"] == steps}
              for w in (meta, foundation)}
    if not picked[meta] or not picked[foundation]:
        raise ValueError(f"results hold no {meta!r} or {foundation!r} records at {steps} steps; evaluate both first")
    added = []
    for (shots, episode), row in sorted(picked[meta].items(), key=lambda kv: kv[0][1]):
        if episode >= len(choices):
            raise ValueError(f"{len(choices)} choices for {len(picked[meta])} episodes; give one per test episode")
        choice = choices[episode]
        if choice.get("task_id", row["task_id"]) != row["task_id"]:
            raise ValueError(f"choice {episode} was made for task {choice['task_id']!r}, not {row['task_id']!r}")
        source = row if choice["use"] == "meta" else picked[foundation][(shots, episode)]
        added.append({**source, "method": name, "steps": steps, "guard": choice["use"]})
    records = results.records + added
    settings = {**results.settings, "methods": list(results.settings["methods"]) + [name]}
    return EvalResults(records, summarize(records), paired_differences(records, settings["reference"]),
                       results.tuning, settings, results.histories, results.timing)
