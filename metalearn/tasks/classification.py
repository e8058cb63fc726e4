"""N-way K-shot text classification episodes over any table with a text and a label column.

Episodes follow the standard few-shot protocol (Vinyals et al. 2016, "Matching Networks"): pick N
classes of one meta-split, K support and Q query examples for each, and remap the N classes to
labels ``0..N-1`` in a random order so a model cannot memorise class identities across episodes.
Meta-splits are disjoint by class; optionally every episode draws its classes from one group
(e.g. one CLINC150 domain), and N and K may vary per episode (``n_way=(3, 10)``).

With ``class_names`` each class also brings its name as one more support example ("book flight" among
the utterances of ``book_flight``), the label-name side information that few-shot intent detection
commonly uses. Every method sees it as an ordinary support example, so comparisons stay paired and fair.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .splits import as_range, assign_splits, check_split, columns_of, draw
from .task import SPLITS, Task

__all__ = ["NWayKShot"]


class NWayKShot:
    """N-way K-shot classification family with class-disjoint meta-splits.

    Args:
        data: a ``datasets.Dataset``, a dict of columns or a list of row dicts.
        n_way: classes per episode, or an inclusive range ``(low, high)`` drawn per episode.
        k_shot: support examples per class, int or range.
        q_query: query examples per class.
        text_column: the column of texts to read.
        label_column: the column of labels (a ``ClassLabel`` label is turned into names).
        splits: fractions ``(train, val, test)`` assigned by a shuffle from ``seed``, or explicit
            class lists ``{"train": [...], "val": [...], "test": [...]}`` (or group lists when
            ``split_by="group"``). A split may be empty (e.g. no train classes for a data set used only
            as a held-out target); sampling it is an error.
        group_by: a column name or a ``{class: group}`` mapping; when given, all classes of an
            episode come from one group.
        split_by: ``"class"`` (default) or ``"group"`` (whole groups go to one meta-split).
        seed: fixes the split assignment; episodes depend only on the rng given to ``sample``.
        name: the data set's name, used in task ids and error messages.
        class_names: add each class's name to the support set as one more example: ``True`` takes the
            label made readable (``book_flight`` -> ``book flight``), a mapping ``{class: text}`` gives the
            texts. K counts the real examples only (``meta["class_names"]`` says the names were added,
            ``meta["name_rows"]`` where they sit in the support set, so that ``guard.support_folds`` never
            holds one out).

    Example:
        >>> fam = NWayKShot({"text": list("abcdefgh"), "label": list("xxyyzzww")}, n_way=2, k_shot=1,
        ...                 q_query=1, splits={"train": ["x", "y"], "val": ["z", "w"], "test": ["x"]})
        Traceback (most recent call last):
        ValueError: meta-splits overlap: classes ['x'] are in both 'train' and 'test'; put each class in one split only
    """

    kind = "classification"

    def __init__(self, data: Any, *, n_way: int | Sequence[int] = 5, k_shot: int | Sequence[int] = 1,
                 q_query: int = 5, text_column: str = "text", label_column: str = "label",
                 splits: Any = (0.6, 0.2, 0.2), group_by: str | Mapping[str, str] | None = None,
                 split_by: str = "class", seed: int = 0, name: str = "dataset",
                 class_names: bool | Mapping[str, str] = False) -> None:
        self.name, self.seed = name, seed
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, int(q_query)
        self._ways, self._shots = as_range(n_way, "n_way"), as_range(k_shot, "k_shot")
        if self.q_query < 1:
            raise ValueError(f"q_query={q_query} is invalid; each class needs at least one query example")
        if split_by not in ("class", "group") or (split_by == "group" and group_by is None):
            raise ValueError(f"split_by={split_by!r} is invalid; use 'class', or 'group' together with group_by")
        needed = [text_column, label_column] + ([group_by] if isinstance(group_by, str) else [])
        cols = columns_of(data, needed, f"data set {name!r}")
        self._texts = [str(t) for t in cols[text_column]]
        labels = _label_names(data, label_column, cols[label_column])
        rows: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            rows[label].append(i)
        self._rows = {c: np.asarray(r) for c, r in rows.items()}
        self._group_of, self._split_by = self._groups(group_by, cols, labels), split_by
        units = sorted(set(self._group_of.values())) if split_by == "group" else sorted(self._rows)
        parts = assign_splits(units, splits, seed, what=split_by)
        if split_by == "group":
            parts = {s: sorted(c for c in self._rows if self._group_of[c] in set(g)) for s, g in parts.items()}
        self._split_classes = {s: sorted(parts[s]) for s in SPLITS}
        self._validate()
        self.class_names = class_names
        self._names = _name_texts(class_names, sorted(self._rows), name)

    # ---------------------------------------------------------------- construction helpers

    def _groups(self, group_by: Any, cols: dict, labels: list[str]) -> dict[str, str] | None:
        if group_by is None:
            return None
        if isinstance(group_by, str):
            group_of: dict[str, str] = {}
            for label, group in zip(labels, cols[group_by]):
                if group_of.setdefault(label, str(group)) != str(group):
                    raise ValueError(
                        f"data set {self.name!r}: class {label!r} appears in groups {group_of[label]!r} and "
                        f"{group!r} of column {group_by!r}; each class must belong to one group"
                    )
            return group_of
        missing = sorted(c for c in self._rows if c not in group_by)
        if missing:
            raise ValueError(f"group_by mapping lacks class(es) {missing[:10]}; give a group for every class")
        return {c: str(group_by[c]) for c in self._rows}

    def _validate(self) -> None:
        need = self._shots[1] + self.q_query
        small = sorted((len(r), c) for c, r in self._rows.items() if len(r) < need)
        if small:
            count, cls = small[0]
            raise ValueError(
                f"data set {self.name!r}: class {cls!r} has {count} examples but k_shot + q_query needs {need} "
                f"({len(small)} class(es) too small); lower k_shot or q_query, or drop the small classes"
            )
        max_n = self._ways[1]
        for split, classes in self._split_classes.items():
            if self._group_of is None and 0 < len(classes) < max_n:  # an empty split is allowed, never sampled
                raise ValueError(
                    f"data set {self.name!r}: split {split!r} has {len(classes)} classes but n_way is up to "
                    f"{max_n}; lower n_way or give that split more classes"
                )
            if self._group_of is not None and not self._eligible(split, max_n):
                sizes = {g: len(c) for g, c in self.groups(split).items()}
                raise ValueError(
                    f"data set {self.name!r}: no group in split {split!r} has {max_n} classes for n_way={max_n} "
                    f"(classes per group: {sizes}); lower n_way"
                    + (", or use split_by='group'" if self._split_by == "class" else "")
                )

    # ---------------------------------------------------------------- what a user looks at

    def classes(self, split: str) -> list[str]:
        """The class names of meta-split ``split``."""
        check_split(split)
        return list(self._split_classes[split])

    def groups(self, split: str) -> dict[str, list[str]]:
        """``{group: classes}`` within ``split`` (empty without ``group_by``)."""
        check_split(split)
        out: dict[str, list[str]] = defaultdict(list)
        if self._group_of is not None:
            for c in self._split_classes[split]:
                out[self._group_of[c]].append(c)
        return dict(out)

    def _eligible(self, split: str, n: int) -> list[list[str]]:
        return [c for _, c in sorted(self.groups(split).items()) if len(c) >= n]

    def __repr__(self) -> str:
        sizes = {s: len(c) for s, c in self._split_classes.items()}
        return (f"NWayKShot({self.name!r}, n_way={self.n_way}, k_shot={self.k_shot}, q_query={self.q_query}, "
                f"classes={sizes})")

    # ---------------------------------------------------------------- sampling

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """One episode of meta-split ``split``, fully determined by ``rng``."""
        check_split(split)
        n, k, q = draw(self._ways, rng), draw(self._shots, rng), self.q_query
        group = None
        pool = self._split_classes[split]
        if self._group_of is not None:
            eligible = self._eligible(split, n)
            pool = eligible[int(rng.integers(len(eligible)))]
            group = self._group_of[pool[0]]
        if not pool:
            raise ValueError(f"data set {self.name!r} has no {split!r} classes to sample; give that split classes")
        chosen = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        support: list[tuple[str, int]] = []
        query: list[tuple[str, int]] = []
        names: list[int] = []  # where the class names sit in ``support``
        for label, cls in enumerate(chosen):
            idx = rng.choice(self._rows[cls], size=k + q, replace=False)
            support += [(self._texts[i], label) for i in idx[:k]]
            query += [(self._texts[i], label) for i in idx[k:]]
            if self._names is not None:
                names.append(len(support))
                support.append((self._names[cls], label))
        support_columns, order = self._columns(support, rng)
        return Task(
            support=support_columns,
            query=self._columns(query, rng)[0],
            kind=self.kind,
            task_id=f"{self.name}/{split}/" + "+".join(chosen),
            label_names=tuple(chosen),
            meta={"split": split, "dataset": self.name, "group": group, "n_way": n, "k_shot": k, "q_query": q,
                  "class_names": self._names is not None,
                  "name_rows": sorted(np.argsort(order)[names].tolist())},  # where the permutation put them
        )

    def _columns(self, pairs: list[tuple[str, int]], rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """The pairs as columns in a random order; and that order (row r holds ``pairs[order[r]]``)."""
        order = rng.permutation(len(pairs))
        return {
            "text": [pairs[i][0] for i in order],
            "label": torch.tensor([pairs[i][1] for i in order], dtype=torch.long),
        }, order


def _name_texts(class_names: Any, classes: list[str], dataset: str) -> dict[str, str] | None:
    """``{class: the text added to its support}``, or None when ``class_names`` is off; bad input refused by name."""
    if class_names is False or class_names is None:
        return None
    if class_names is True:
        numbers = [c for c in classes if c.strip().lstrip("-").isdigit()]
        if numbers:
            raise ValueError(f"data set {dataset!r}: class_names=True needs readable class names, but its classes are "
                             f"numbers ({', '.join(numbers[:3])}, ...); give class_names={{class: text}}, or leave "
                             "class_names off")
        return {c: " ".join(c.replace("_", " ").split()) for c in classes}
    if not isinstance(class_names, Mapping):
        raise ValueError(f"data set {dataset!r}: class_names={class_names!r} is invalid; use True, False or a "
                         "mapping {class: text}")
    texts = {str(c): t for c, t in class_names.items()}
    missing = [c for c in classes if c not in texts]
    blank = [c for c in classes if c in texts and (not isinstance(texts[c], str) or not texts[c].strip())]
    if missing or blank:
        raise ValueError(f"data set {dataset!r}: class_names lacks a text for class(es) {(missing + blank)[:10]}; "
                         "give a non-empty text for every class")
    return {c: texts[c].strip() for c in classes}


def _label_names(data: Any, column: str, values: list) -> list[str]:
    """Labels as strings; ``ClassLabel`` integers become their names."""
    feature = getattr(data, "features", {}).get(column) if hasattr(data, "features") else None
    if feature is not None and hasattr(feature, "int2str"):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]
