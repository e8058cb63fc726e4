"""Shared helpers for families: meta-split assignment, size ranges, column checks, seeding."""
from __future__ import annotations

import string
from typing import Any, Mapping, Sequence

import numpy as np

from .task import SPLITS

__all__ = ["as_range", "assign_splits", "check_split", "columns_of", "draw", "template_fields"]

Splits = "Mapping[str, float | Sequence[str]] | Sequence[float]"


def as_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``5`` -> ``(5, 5)``; ``(3, 10)`` -> ``(3, 10)`` (inclusive); validated positive."""
    lo, hi = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if not (isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer))) or lo < 1 or hi < lo:
        raise ValueError(f"{name}={value!r} is invalid; give a positive int or an inclusive range (low, high)")
    return int(lo), int(hi)


def draw(bounds: tuple[int, int], rng: np.random.Generator) -> int:
    """A size from an inclusive range (no rng draw when it is fixed, so fixed sizes cost nothing)."""
    return bounds[0] if bounds[0] == bounds[1] else int(rng.integers(bounds[0], bounds[1] + 1))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; use one of {SPLITS}")


def assign_splits(items: Sequence[str], splits: Any, seed: int, what: str = "class") -> dict[str, list[str]]:
    """Partition ``items`` into disjoint train/val/test lists.

    ``splits`` is fractions (``(0.6, 0.2, 0.2)`` or ``{"train": 0.6, ...}``), assigned by a shuffle
    seeded with ``seed``, or explicit lists ``{"train": [...], "val": [...], "test": [...]}``.
    """
    items = sorted(dict.fromkeys(items))
    if isinstance(splits, Mapping) and all(not isinstance(v, (int, float)) for v in splits.values()):
        return _explicit(items, splits, what)
    fractions = dict(splits) if isinstance(splits, Mapping) else dict(zip(SPLITS, splits))
    unknown = set(fractions) - set(SPLITS)
    if unknown or len(fractions) != 3 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"splits={splits!r} is invalid; give three fractions for {SPLITS}, e.g. (0.6, 0.2, 0.2)")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} sum to {total:g}; make them sum to 1")
    order = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    n_val = int(round(fractions["val"] * len(items)))
    n_test = int(round(fractions["test"] * len(items)))
    n_train = len(items) - n_val - n_test
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def split_by_fractions(ids: Sequence[str], fractions: Mapping[str, float]) -> dict[str, list[str]]:
    """Cut ``ids`` (already shuffled) into train / val / test by ``fractions``, at least one each for val and test."""
    n_val = max(1, round(fractions["val"] * len(ids)))
    n_test = max(1, round(fractions["test"] * len(ids)))
    n_train = len(ids) - n_val - n_test
    return {"train": list(ids[:n_train]), "val": list(ids[n_train:n_train + n_val]),
            "test": list(ids[n_train + n_val:])}


def _explicit(items: list[str], splits: Mapping[str, Sequence[str]], what: str) -> dict[str, list[str]]:
    missing = [s for s in SPLITS if s not in splits]
    if missing or set(splits) - set(SPLITS):
        raise ValueError(f"explicit splits need exactly the keys {SPLITS}; got {sorted(splits)}")
    plural = {"class": "classes"}.get(what, what + "s")
    out = {s: [str(x) for x in ([splits[s]] if isinstance(splits[s], str) else splits[s])] for s in SPLITS}
    known = set(items)
    for s, members in out.items():
        unknown = [m for m in members if m not in known]
        if unknown:
            raise ValueError(f"split {s!r} names unknown {plural} {unknown[:10]}; available: {items[:20]}")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            overlap = sorted(set(out[a]) & set(out[b]))
            if overlap:
                raise ValueError(
                    f"meta-splits overlap: {plural} {overlap} are in both {a!r} and {b!r}; "
                    f"put each {what} in one split only"
                )
    return out


def columns_of(data: Any, needed: Sequence[str], source: str) -> dict[str, list]:
    """Read ``needed`` columns of a ``datasets.Dataset`` / column dict / list of row dicts as lists."""
    if isinstance(data, list):
        available = list(data[0]) if data else []
        get = lambda c: [row[c] for row in data]  # noqa: E731
    else:
        if hasattr(data, "with_format"):  # a datasets.Dataset: plain Python values, read in one slice
            data = data.with_format(None)
        available = list(getattr(data, "column_names", None) or list(data))
        get = lambda c: list(data[c][:])  # noqa: E731
    for col in needed:
        if col not in available:
            raise ValueError(
                f"{source}: column {col!r} is missing; available columns are {available}. "
                "Name an existing column (e.g. text_column=..., label_column=...)"
            )
    return {col: get(col) for col in needed}


def template_fields(template: str) -> list[str]:
    """Field names used by a ``str.format`` template (``"Q: {input}"`` -> ``["input"]``)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string ({err}); escape braces as {{{{ }}}}")
