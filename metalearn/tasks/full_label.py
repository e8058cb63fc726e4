"""The full-label few-shot protocol: every class of a data set, K labelled examples each, the whole test split.

Few-shot intent detection is usually scored this way rather than in N-way episodes: CLINC150 150-way
and HWU64 64-way with K = 5 or 10 examples per intent drawn from the official training split, and the
whole official test split as queries, averaged over a few seeds (Zhang et al. 2020, "Discriminative
Nearest Neighbor Few-Shot Intent Detection by Transferring Natural Language Inference", DNNC; Zhang et
al. 2021, "Few-Shot Intent Detection via Contrastive Pre-Training and Fine-Tuning", CPFT; Casanueva et
al. 2020, "Efficient Intent Detection with Dual Sentence Encoders", for the HWU64 / BANKING77 few-shot
settings). A :class:`FullLabel` family draws one such task per ``sample`` call; the rng picks only the
support set, so seeds differ in their support and share their queries.

Data: a table with a text, a label and an ``official_split`` column (``train`` / ``val`` / ``test``), as
the ``clinc150`` and ``hwu64`` readers emit. Where the data set has no official validation split (HWU64),
``val_fraction`` holds out a seeded, per-class slice of the train split as validation queries; those rows
are never support examples, whichever split is sampled.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any, Mapping

import numpy as np
import torch

from .classification import _label_names, _name_texts
from .splits import check_split, columns_of
from .task import Task

__all__ = ["FullLabel"]

OFFICIAL = ("train", "val", "test")


class FullLabel:
    """All classes, ``k_shot`` support examples each from the official train split; queries = a whole split.

    ``sample("test", rng)`` returns one classification ``Task`` whose support holds ``k_shot`` rows of every
    class (drawn with ``rng`` from the official train split) and whose query is the whole official test
    split in file order. ``sample("val", rng)`` queries the validation pool instead: the official val split,
    or the slice held out by ``val_fraction``. ``sample("train", ...)`` is refused: this family is a held-out
    target, so meta-train on other data (a leave-one-out mixture) and evaluate here.

    Labels are fixed, not permuted per episode: label ``i`` is ``label_names[i]``, the ``i``-th class in
    sorted order, identical for every seed and for support and query. The support rows come in a random
    order. A train row whose text is also a query text (val or test) is never drawn as support, so the
    support set never contains a query (CLINC150 has a few such duplicate utterances across its splits).

    Args:
        data: a ``datasets.Dataset``, a dict of columns or a list of row dicts.
        k_shot: support examples per class; at most the smallest class's support pool (``max_k_shot``).
        text_column: the column of texts to read.
        label_column: the column of labels (a ``ClassLabel`` label is turned into names).
        split_column: the column naming each row's official split, with values ``train``, ``val``, ``test``.
        val_fraction: for data without official val rows only: the fraction of each class's train rows held
            out (at least one per class, chosen by a shuffle from ``seed``) as validation queries. None: no
            validation pool (sampling ``"val"`` is then an error).
        seed: fixes the ``val_fraction`` hold-out; tasks depend only on the rng given to ``sample``.
        name: the data set's name, used in task ids and error messages.
        class_names: add each class's name to the support set as one more example (as in
            :class:`~metalearn.tasks.NWayKShot`); ``True`` or a mapping ``{class: text}``.

    Example:
        >>> rows = [{"text": f"{c}{i}", "label": c, "official_split": s}
        ...         for c in "ab" for i, s in enumerate(["train"] * 3 + ["test"])]
        >>> task = FullLabel(rows, k_shot=2, name="toy").sample("test", np.random.default_rng(0))
        >>> task.n_way, len(task.support["text"]), task.query["text"]
        (2, 4, ['a3', 'b3'])
    """

    kind = "classification"

    def __init__(self, data: Any, *, k_shot: int = 5, text_column: str = "text", label_column: str = "label",
                 split_column: str = "official_split", val_fraction: float | None = None, seed: int = 0,
                 name: str = "dataset", class_names: bool | Mapping[str, str] = False) -> None:
        self.name, self.seed, self.val_fraction, self.class_names = name, seed, val_fraction, class_names
        if isinstance(k_shot, bool) or not isinstance(k_shot, (int, np.integer)) or k_shot < 1:
            raise ValueError(f"data set {name!r}: k_shot={k_shot!r} is invalid; give a positive int (e.g. 5 or 10)")
        self.k_shot = int(k_shot)
        cols = columns_of(data, [text_column, label_column, split_column], f"data set {name!r}")
        self._texts = [str(t) for t in cols[text_column]]
        labels = _label_names(data, label_column, cols[label_column])
        official = [str(s) for s in cols[split_column]]
        self._check_official(official, split_column)
        rows: dict[str, list[int]] = {s: [i for i, v in enumerate(official) if v == s] for s in OFFICIAL}
        self._queries = {"test": np.asarray(rows["test"], dtype=np.int64)}
        train = self._hold_out_val(rows, labels)
        query_texts = {self._texts[i] for s in ("val", "test") for i in self._queries.get(s, [])}
        pools: dict[str, list[int]] = defaultdict(list)
        self.excluded = 0  # train rows left out of the support pool because a query has the same text
        for i in train:
            if self._texts[i] in query_texts:
                self.excluded += 1
            else:
                pools[labels[i]].append(i)
        self._classes = sorted(pools)
        self._pools = {c: np.asarray(pools[c], dtype=np.int64) for c in self._classes}
        self._label_of = {c: j for j, c in enumerate(self._classes)}
        self._labels = labels
        self._check_queries()
        self._check_k_shot(self.k_shot)
        self._names = _name_texts(class_names, self._classes, name)

    # ---------------------------------------------------------------- construction helpers

    def _check_official(self, official: list[str], column: str) -> None:
        unknown = sorted(set(official) - set(OFFICIAL))
        if unknown:
            raise ValueError(f"data set {self.name!r}: column {column!r} holds {unknown[:5]}, not one of {OFFICIAL}; "
                             "read only the official train/val/test parts (e.g. leave CLINC150's oos_* parts out)")
        for part in ("train", "test"):
            if part not in official:
                raise ValueError(f"data set {self.name!r} has no official {part!r} rows in column {column!r}; the "
                                 "full-label protocol needs train rows (support) and test rows (queries)")
        if "val" in official and self.val_fraction is not None:
            raise ValueError(f"data set {self.name!r} has an official val split, so val_fraction="
                             f"{self.val_fraction!r} would not be used; leave val_fraction unset (None)")

    def _hold_out_val(self, rows: dict[str, list[int]], labels: list[str]) -> list[int]:
        """The train rows that may be support; sets ``self._queries["val"]`` (official, held out, or none)."""
        if rows["val"]:
            self._queries["val"] = np.asarray(rows["val"], dtype=np.int64)
            return rows["train"]
        if self.val_fraction is None:
            return rows["train"]
        frac = self.val_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise ValueError(f"data set {self.name!r}: val_fraction={frac!r} is invalid; give a fraction between 0 "
                             "and 1 (e.g. 0.1), or None for no validation pool")
        by_class: dict[str, list[int]] = defaultdict(list)
        for i in rows["train"]:
            by_class[labels[i]].append(i)
        rng = np.random.default_rng(self.seed)
        held: set[int] = set()
        for cls in sorted(by_class):
            members = by_class[cls]
            n = max(1, int(round(frac * len(members))))
            held.update(members[j] for j in rng.permutation(len(members))[:n])
        self._queries["val"] = np.asarray(sorted(held), dtype=np.int64)  # in file order
        return [i for i in rows["train"] if i not in held]

    def _check_queries(self) -> None:
        for split, idx in self._queries.items():
            unknown = sorted({self._labels[i] for i in idx} - set(self._pools))
            if unknown:
                raise ValueError(f"data set {self.name!r}: {split} classes {unknown[:5]} have no train rows to draw "
                                 "support from; give every class train rows, or drop those classes")

    def _check_k_shot(self, k: int) -> None:
        if k > self.max_k_shot:
            small = sorted((len(p), c) for c, p in self._pools.items() if len(p) < k)
            size, cls = small[0]
            raise ValueError(f"data set {self.name!r}: k_shot={k} is larger than the support pool of class {cls!r} "
                             f"({size} train rows; {len(small)} class(es) too small); use k_shot <= {self.max_k_shot}")

    # ---------------------------------------------------------------- what a user looks at

    @property
    def n_way(self) -> int:
        """Number of classes: every class of the data set."""
        return len(self._classes)

    @property
    def max_k_shot(self) -> int:
        """The largest valid ``k_shot``: the size of the smallest class's support pool."""
        return min(len(p) for p in self._pools.values())

    def classes(self, split: str = "test") -> list[str]:
        """The class names in label order for a split that has queries; ``[]`` for ``train`` (never sampled)
        and for ``val`` without a validation pool, as for an empty meta-split of other families."""
        check_split(split)
        return list(self._classes) if split in self._queries else []

    def pool_sizes(self) -> dict[str, int]:
        """``{class: train rows it may draw support from}``."""
        return {c: len(p) for c, p in self._pools.items()}

    def query_count(self, split: str) -> int:
        """Rows in the query set of ``split`` (0 for a split without queries)."""
        check_split(split)
        return len(self._queries.get(split, ()))

    def __repr__(self) -> str:
        return (f"FullLabel({self.name!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
                f"queries={{'val': {self.query_count('val')}, 'test': {self.query_count('test')}}})")

    # ---------------------------------------------------------------- sampling

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """One full-label task: ``k_shot`` support rows of every class, the whole ``split`` as queries.

        Args:
            split: ``"test"`` (the official test split) or ``"val"`` (the validation pool).
            rng: draws the support rows and their order; nothing else is random.

        Returns:
            A classification ``Task`` with ``n_way`` classes in fixed (sorted) label order.
        """
        check_split(split)
        if split == "train":
            raise ValueError(f"data set {self.name!r}: the full-label protocol has no 'train' split to sample: it is a "
                             "held-out target; meta-train on other families and sample 'val' or 'test' here")
        if split not in self._queries:
            raise ValueError(f"data set {self.name!r} has no validation pool (no official val rows); set "
                             "val_fraction (e.g. 0.1) to hold out part of the train split, or sample 'test'")
        k = self.k_shot
        support: list[tuple[str, int]] = []
        rows: list[int] = []
        names: list[int] = []  # where the class names sit in ``support`` before the shuffle
        for label, cls in enumerate(self._classes):
            idx = rng.choice(self._pools[cls], size=k, replace=False)
            rows += [int(i) for i in idx]
            support += [(self._texts[i], label) for i in idx]
            if self._names is not None:
                names.append(len(support))
                rows.append(-1)
                support.append((self._names[cls], label))
        order = rng.permutation(len(support))
        query_idx = self._queries[split]
        digest = hashlib.sha256(np.asarray(rows, dtype=np.int64)[order].tobytes()).hexdigest()[:12]
        return Task(
            support={"text": [support[i][0] for i in order],
                     "label": torch.tensor([support[i][1] for i in order], dtype=torch.long)},
            query={"text": [self._texts[i] for i in query_idx],
                   "label": torch.tensor([self._label_of[self._labels[i]] for i in query_idx], dtype=torch.long)},
            kind=self.kind,
            task_id=f"{self.name}/{split}/full_label/{k}-shot/{digest}",
            label_names=tuple(self._classes),
            meta={"split": split, "dataset": self.name, "protocol": "full_label", "n_way": self.n_way,
                  "k_shot": k, "n_query": len(query_idx), "query_source": self._query_source(split),
                  "class_names": self._names is not None,
                  "name_rows": sorted(np.argsort(order)[names].tolist()),
                  "support_rows": [rows[i] for i in order]},  # row of the data as read; -1 for a class name
        )

    def _query_source(self, split: str) -> str:
        if split == "test":
            return "official test split"
        if self.val_fraction is None:
            return "official val split"
        return f"train split held out (val_fraction={self.val_fraction}, seed={self.seed})"
