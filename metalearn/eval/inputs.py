"""Checked inputs for the harness: the family per shot count, the paired task lists, every argument.

Everything here runs before any adaptation, so bad input fails fast with a ``ValueError`` that names
the problem and the fix.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

import numpy as np

from ..config import METHODS
from ..learner import Learner
from ..tasks.splits import as_range
from ..tasks.task import Task, check_family, sample_task
from . import baselines as bl
from .workers import check_workers

__all__ = ["MODEL_TYPES_FOR_KIND", "FamilyOrFactory", "check_inputs", "family_for_shots", "sample_tasks",
           "shots_label"]

MODEL_TYPES_FOR_KIND = {"regression": ("module",), "classification": ("encoder",), "generation": ("causal", "seq2seq")}

FamilyOrFactory = Union[Any, Callable[[int], Any]]


# ---------------------------------------------------------------- tasks and shots


def family_for_shots(family: FamilyOrFactory, k: Optional[int]) -> Any:
    """The family with ``k_shot = k``: a factory is called; a family is copied with ``k_shot`` replaced.

    A copy, not a rebuild: the data and the meta-split assignment stay exactly as they were, only the
    support size changes (a family may define ``with_k_shot(k)`` to control this itself).
    """
    if k is None:
        return family
    if not hasattr(family, "sample") and callable(family):
        built = family(k)
        check_family(built)
        return built
    if callable(getattr(family, "with_k_shot", None)):
        return family.with_k_shot(k)
    inner = getattr(family, "base", None)
    if inner is not None and hasattr(inner, "sample") and hasattr(inner, "k_shot"):  # a wrapper (Verbalized)
        new = copy.copy(family)
        new.base = family_for_shots(inner, k)
        return new
    if not hasattr(family, "k_shot") or not hasattr(family, "_shots"):
        raise ValueError(f"{type(family).__name__} has no k_shot to change; pass shots=None, or pass the family as "
                         "a factory, e.g. family=lambda k: MyFamily(k_shot=k)")
    new = copy.copy(family)
    new.k_shot, new._shots = k, as_range(k, "k_shot")
    if callable(getattr(new, "_validate", None)):
        new._validate()  # e.g. every class still has k_shot + q_query examples
    return new


def sample_tasks(family: Any, split: str, n: int, seed: int) -> list[Task]:
    """``n`` tasks of ``split`` from one ``default_rng(seed)`` stream; a clear error if the split is empty."""
    for lister in ("tasks", "classes", "rules"):
        fn = getattr(family, lister, None)
        if callable(fn):
            try:
                listed = fn(split)
            except Exception:  # noqa: BLE001 - only a hint; sampling below gives the real error
                continue
            if isinstance(listed, (list, tuple)) and not listed:
                raise ValueError(f"{family!r} has no {split} {lister}: the {split!r} meta-split is empty; give the "
                                 f"family held-out {split} {lister} (its splits setting) before evaluating")
    rng = np.random.default_rng(seed)
    try:
        tasks = [sample_task(family, split, rng) for _ in range(n)]
    except (ValueError, IndexError, KeyError, ZeroDivisionError) as err:
        raise ValueError(f"{family!r} cannot sample its {split!r} split ({type(err).__name__}: {err}); the split is "
                         f"empty or too small: give the family held-out {split} tasks before evaluating") from err
    wrong = [t.kind for t in tasks if t.kind != family.kind]
    if wrong:
        raise ValueError(f"{family!r} says kind={family.kind!r} but sampled a {wrong[0]!r} task; make them agree")
    return tasks


def shots_label(k: Optional[int], tasks: list[Task]) -> Optional[int]:
    if k is not None:
        return k
    ks = {t.meta.get("k_shot") for t in tasks}
    return ks.pop() if len(ks) == 1 and isinstance(next(iter(ks), None), int) else None


# ---------------------------------------------------------------- input checks


def check_inputs(methods, family, baselines, steps, shots, episodes, base, reference, lr_grid, val_episodes,
                  output_dir, reuse=True, episode_batch=1, workers=1):
    """Normalize and validate every argument; raise ValueError with the fix before any work."""
    check_workers(workers)
    if not isinstance(reuse, bool):
        raise ValueError(f"reuse={reuse!r} is invalid; use True (share work across step counts and episodes) or "
                         "False (recompute everything, the original path)")
    if not isinstance(episode_batch, (int, np.integer)) or isinstance(episode_batch, bool) or episode_batch < 1:
        raise ValueError(f"episode_batch={episode_batch!r} is invalid; use a positive number of episodes adapted "
                         "together (1: one at a time)")
    if isinstance(methods, Learner):
        methods = {"learner": methods}
    methods = dict(methods or {})
    for name, learner in methods.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"method name {name!r} is invalid; name every method with a non-empty string")
        if isinstance(learner, str):
            what = (f"{learner!r} is a meta-learning method name, not a Learner: fit it first with "
                    f"metalearn.fit(family, model, method={learner!r})" if learner in METHODS else
                    f"unknown method name {learner!r}; meta-learning methods are {list(METHODS)} (fit them with "
                    f"metalearn.fit), baselines are {list(bl.BASELINES)} (pass them as baselines=[...])")
            raise ValueError(f"methods[{name!r}]: {what}")
        if not isinstance(learner, Learner):
            raise ValueError(f"methods[{name!r}] is a {type(learner).__name__}, not a Learner; pass the result of "
                             "metalearn.fit or metalearn.load")
    if isinstance(baselines, str):
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    if baselines is not None and not isinstance(baselines, Iterable):
        raise ValueError(f"baselines={baselines!r} is invalid: give a list of baseline names, e.g. "
                         f"['prototypes', 'random_init'], or None for none; baselines are {list(bl.BASELINES)}")
    baselines = list(dict.fromkeys(baselines or ()))  # None: no baselines
    clash = sorted(set(methods) & set(bl.BASELINES))
    if clash:
        raise ValueError(f"method name(s) {clash} are baseline names; rename the learner(s), e.g. 'my_{clash[0]}'")
    base = base or next(iter(methods.values()), None)
    if base is None:
        raise ValueError("nothing to evaluate: give methods={name: Learner} and/or baselines with base=<a Learner> "
                         "whose frozen model the baselines use")
    if not methods and not baselines:
        raise ValueError("nothing to evaluate: methods and baselines are both empty")
    steps = _int_list(steps, "steps", minimum=0, fix="e.g. steps=[0, 1, 5, 10]")
    shots_list = [None] if shots is None else _int_list(shots, "shots", minimum=1, fix="e.g. shots=[1, 5]")
    if episodes is not None and (not isinstance(episodes, (int, np.integer)) or episodes < 1):
        raise ValueError(f"episodes={episodes!r} is invalid; use a positive number of test episodes (e.g. 600)")
    if lr_grid is not None:
        grid = list(lr_grid)
        if not all(isinstance(g, (int, float)) and g > 0 and math.isfinite(g) for g in grid):
            raise ValueError(f"lr_grid={lr_grid!r} is invalid; give positive multipliers (e.g. [0.3, 1, 3]) or None")
        if grid and (not isinstance(val_episodes, (int, np.integer)) or val_episodes < 1):
            raise ValueError(f"val_episodes={val_episodes!r} is invalid; the learning-rate search needs >= 1 val task")
    if not hasattr(family, "sample") and not callable(family):
        raise ValueError(f"family {family!r} is neither a task family nor a factory k_shot -> family")
    if not hasattr(family, "sample") and shots is None:
        raise ValueError("family is a factory k_shot -> family; give shots=[...] so it can be called")
    families = {k: family_for_shots(family, k) for k in shots_list}  # built once (a factory may read data)
    kind = families[shots_list[0]].kind
    for name, learner in list(methods.items()) + [("base", base)]:
        model_type = learner.model.model_type
        if model_type not in MODEL_TYPES_FOR_KIND[kind]:
            raise ValueError(f"{name}: a {model_type!r} model cannot run {kind} tasks; use a "
                             f"{' / '.join(MODEL_TYPES_FOR_KIND[kind])} model (or a family of another kind)")
    for b in baselines:
        bl.check_baseline(b, base.model.model_type, kind)
    names = list(methods) + baselines
    if reference is not None and reference not in names:
        raise ValueError(f"reference={reference!r} is not one of the evaluated methods {names}")
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={output_dir!r} is a file; give a folder path")
    return methods, baselines, steps, families, episodes, base


def _int_list(values: Any, name: str, minimum: int, fix: str) -> list[int]:
    if isinstance(values, (int, np.integer)):
        values = [values]
    values = list(values) if values is not None else []
    if not values:
        raise ValueError(f"{name}=[] is empty; give at least one value ({fix})")
    bad = [v for v in values if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum]
    if bad:
        what = "non-negative" if minimum == 0 else "positive"
        raise ValueError(f"{name}={values!r} is invalid: {bad} not {what} integer(s) ({fix})")
    return sorted({int(v) for v in values})
