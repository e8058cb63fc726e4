"""Pseudo-tasks from a task's support set alone, for deciding without ever reading its query set.

Fold j holds out the j-th support example of every class (leave-one-shot-out), so a method can be scored on
examples it did not adapt on. The guard (``Learner.decide``, ``metalearn.eval.guard``) compares the
meta-learned init with the foundation this way.
"""
from __future__ import annotations

from typing import Optional

import torch

from .task import Task

__all__ = ["fold_rows", "support_folds"]


def support_folds(task: Task, folds: Optional[int] = None) -> list[Task]:
    """Pseudo-tasks from ``task``'s support set alone: fold j holds out the j-th support example of every class.

    Each has the other K-1 examples per class as support and the held-out ones as query; ``folds`` caps how
    many (default K). Needs K >= 2 examples in every class. Class names in the support set
    (``task.meta["name_rows"]``, from ``NWayKShot(class_names=...)``) are side information, not examples: they
    stay in every fold's support and are never held out, nor counted in K.
    """
    names = set(task.meta.get("name_rows", ()))
    return [Task(_take(task.support, rest), _take(task.support, held), task.kind, task_id=f"{task.task_id}#fold{j}",
                 label_names=task.label_names, meta={"name_rows": [r for r, i in enumerate(rest) if i in names]})
            for j, (rest, held) in enumerate(fold_rows(task, folds))]


def fold_rows(task: Task, folds: Optional[int] = None) -> list[tuple[list[int], list[int]]]:
    """``support_folds`` as row indices into ``task.support``: (the fold's support rows, its held-out rows) each.

    For scoring folds from features of the whole support set computed once (``guarded.decide`` at 0 steps).
    """
    labels = torch.as_tensor(task.support["label"]).tolist()
    names = set(task.meta.get("name_rows", ()))
    rows: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        if i not in names:
            rows.setdefault(int(y), []).append(i)
    k = min(len(r) for r in rows.values())
    if k < 2:
        raise ValueError(f"task {task.task_id!r} has {k} support example(s) in a class: holding support examples out "
                         "needs K >= 2; at K = 1 decide per family on a validation split (guard.choose)")
    if folds is not None and (not isinstance(folds, int) or folds < 1):
        raise ValueError(f"folds={folds!r} is invalid: use a positive number of folds, or None for K")
    out = []
    for j in range(k if folds is None else min(folds, k)):
        held = sorted(r[j] for r in rows.values())
        out.append(([i for i in range(len(labels)) if i not in set(held)], held))
    return out


def _take(examples: dict, rows: list[int]) -> dict:
    index = torch.tensor(rows, dtype=torch.long)
    return {c: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in rows] for c, v in examples.items()}
