"""A task (support + query) and the family protocol that samples tasks.

The contract every family honours and the rest of metalearn relies on:

* ``Task.kind`` says which loss applies: ``"regression"`` (MSE), ``"classification"``
  (cross-entropy over ``n_way`` classes) or ``"generation"`` (next-token NLL on the completion).
* ``Task.support`` / ``Task.query`` are column dicts (``Examples``). Columns by kind:

  - regression:     ``{"x": FloatTensor (n, d_in), "y": FloatTensor (n, d_out)}``
  - classification: ``{"text": list[str], "label": LongTensor (n,)}``, labels remapped to
    ``0..n_way-1`` per episode; ``label_names[i]`` names episode label ``i``.
  - generation:     ``{"prompt": list[str], "completion": list[str]}``; when the task is a
    classification by verbalizer, also ``"label": LongTensor (n,)`` and ``label_names`` holds the
    verbalizer words (the completions the model may choose from).

* A family is any object with ``kind`` and ``sample(split, rng) -> Task``, where ``split`` is one of
  ``"train"``, ``"val"``, ``"test"`` and ``rng`` a ``numpy.random.Generator``. Meta-splits are
  disjoint (by class or by task). That is the whole protocol; ``metalearn.fit`` accepts any object
  that follows it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

KINDS = ("regression", "classification", "generation")
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = {
    "regression": ("x", "y"),
    "classification": ("text", "label"),
    "generation": ("prompt", "completion"),
}

Examples = Mapping[str, "torch.Tensor | Sequence[Any]"]


def num_examples(examples: Examples) -> int:
    """Number of rows in a column dict (all columns must agree)."""
    lengths = {name: len(col) for name, col in examples.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths {lengths}; every column needs one entry per example")
    return next(iter(lengths.values()), 0)


@dataclass(frozen=True)
class Task:
    """One few-shot task: adapt on ``support``, score on ``query``."""

    support: Examples
    query: Examples
    kind: str
    task_id: str = ""
    label_names: tuple[str, ...] = ()
    template: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Task kind {self.kind!r} is unknown; use one of {KINDS}")
        for part in ("support", "query"):
            examples = getattr(self, part)
            missing = [c for c in REQUIRED_COLUMNS[self.kind] if c not in examples]
            if missing:
                raise ValueError(
                    f"task {self.task_id!r}: {part} lacks column(s) {missing}; a {self.kind} task needs "
                    f"{REQUIRED_COLUMNS[self.kind]}"
                )
            if num_examples(examples) == 0:
                raise ValueError(
                    f"task {self.task_id!r}: {part} set is empty; sample at least one example for it"
                )
        if "label" in self.support:
            self._check_labels()

    def _check_labels(self) -> None:
        """Labels are integers in ``0..n_way-1`` in both sets (the query may not invent classes)."""
        where = "from label_names" if self.label_names else "counted from the support labels"
        for part in ("support", "query"):
            labels = getattr(self, part).get("label")
            if labels is None:
                continue
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                labels = None
            if labels is None or labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"task {self.task_id!r}: {part} labels must be integers 0..N-1; map class names "
                                 "to episode label ids (and keep the names in label_names)")
            bad = sorted({int(v) for v in labels.flatten().tolist() if not 0 <= v < self.n_way})
            if bad:
                raise ValueError(f"task {self.task_id!r}: {part} labels {bad[:5]} lie outside 0..{self.n_way - 1} "
                                 f"(the task has {self.n_way} classes, {where}); remap each episode's labels to "
                                 "0..N-1 and make sure every query class also occurs in the support set")

    @property
    def n_way(self) -> int:
        """Number of classes in a classification episode (0 for other kinds)."""
        if "label" not in self.support:
            return 0
        return len(self.label_names) or int(torch.as_tensor(self.support["label"]).max()) + 1


@runtime_checkable
class TaskFamily(Protocol):
    """What ``metalearn.fit`` needs from a family of tasks."""

    kind: str

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """Draw one task from meta-split ``split`` ("train", "val" or "test")."""
        ...


def check_family(family: object) -> None:
    """Raise a clear error if ``family`` does not follow the TaskFamily protocol."""
    if not callable(getattr(family, "sample", None)):
        raise TypeError(
            f"{type(family).__name__} is not a task family: it needs a method sample(split, rng) -> Task "
            "(see metalearn.tasks.TaskFamily)"
        )
    kind = getattr(family, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"{type(family).__name__}.kind is {kind!r}; set it to one of {KINDS}")


def sample_task(family: object, split: str, rng: np.random.Generator) -> Task:
    """``family.sample(split, rng)``, checked to be a ``Task``."""
    task = family.sample(split, rng)  # type: ignore[attr-defined]
    if not isinstance(task, Task):
        raise TypeError(f"{type(family).__name__}.sample({split!r}, rng) returned a {type(task).__name__}, not a "
                        "metalearn.tasks.Task; return Task(support, query, kind) (see metalearn.tasks.TaskFamily)")
    return task
