"""A mixture of task families: each episode comes from one source, as in Meta-Dataset.

Triantafillou et al. 2020 ("Meta-Dataset") train on several data sets at once: an episode first
picks one source (here with fixed weights), then that source samples the whole episode, so classes of
two data sets never meet in one episode. Every source keeps its own class-disjoint meta-splits, and
the source choice is drawn from the same ``rng`` as the episode, so sampling stays reproducible.

    family = mix({"clinc150": load("clinc150"), "huffpost": load("huffpost")}, weights=[2, 1])
    task = family.sample("train", numpy.random.default_rng(0))
    task.meta["source"]  # "clinc150" or "huffpost"

A spec lists other specs (``family: mixture``, see ``metalearn.tasks.specs``); ``without(name)``
drops one source, e.g. for leave-one-data-set-out experiments.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .splits import check_split
from .task import Task, check_family

__all__ = ["Mixture", "check_target", "mix"]

Weights = Union[Sequence[float], Mapping[str, float], None]


class Mixture:
    """Episodes from several families, one source per episode, chosen with ``weights``.

    Args:
        sources: ``{name: family}``; every family has the same ``kind``.
        weights: one non-negative weight per source (a sequence in the sources' order, or a mapping by
            name), not all zero; normalized to probabilities. None: uniform.
        name: the mixture's name (task ids and error messages).
    """

    def __init__(self, sources: Mapping[str, Any], weights: Weights = None, name: str = "mixture") -> None:
        self.name = name
        if not isinstance(sources, Mapping) or not sources:
            raise ValueError(f"mixture {name!r} needs at least one source: give {{name: family}} or a list of families")
        for key, family in sources.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"mixture {name!r}: source name {key!r} is invalid; name every source with a "
                                 "non-empty string")
            check_family(family)
        seen: dict[int, str] = {}
        for key, family in sources.items():
            if id(family) in seen:
                raise ValueError(f"mixture {name!r} lists the same source twice: {family!r} as {seen[id(family)]!r} "
                                 f"and {key!r}; list each source once (give it more weight instead)")
            seen[id(family)] = key
        kinds = {key: family.kind for key, family in sources.items()}
        if len(set(kinds.values())) > 1:
            raise ValueError(f"mixture {name!r} mixes task kinds {kinds}; every source must be of one kind")
        self.kind = next(iter(kinds.values()))
        self._sources = dict(sources)
        self._names = list(sources)
        self._probs = _probabilities(self._names, weights, name)

    @property
    def sources(self) -> dict[str, Any]:
        """``{name: family}`` in sampling order."""
        return dict(self._sources)

    @property
    def weights(self) -> dict[str, float]:
        """The probability of each source (the weights, normalized)."""
        return {n: float(p) for n, p in zip(self._names, self._probs)}

    def without(self, name: str) -> "Mixture":
        """The same mixture minus source ``name`` (the other weights renormalized)."""
        if name not in self._sources:
            raise ValueError(f"mixture {self.name!r} has no source {name!r}; its sources are {self._names}")
        rest = [n for n in self._names if n != name]
        if not rest:
            raise ValueError(f"mixture {self.name!r} has only the source {name!r}; nothing would be left")
        weights = self.weights
        return Mixture({n: self._sources[n] for n in rest}, [weights[n] for n in rest], f"{self.name}-{name}")

    def classes(self, split: str) -> list[str]:
        """The classes of ``split`` over all sources that list classes, as ``"source/class"``."""
        check_split(split)
        out = []
        for key, family in self._sources.items():
            lister = getattr(family, "classes", None)
            if callable(lister):
                out += [f"{key}/{c}" for c in lister(split)]
        return out

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """Pick a source with the weights, then let it sample the whole episode; both draws come from ``rng``."""
        check_split(split)
        key = self._names[int(rng.choice(len(self._names), p=self._probs))]
        task = self._sources[key].sample(split, rng)
        return dataclasses.replace(task, task_id=f"{key}:{task.task_id}", meta={**task.meta, "source": key})

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {p:.3g}" for n, p in zip(self._names, self._probs))
        return f"Mixture({self.name!r}, {{{parts}}})"


def mix(sources: Union[Mapping[str, Any], Sequence[Any]], weights: Weights = None, name: str = "mixture") -> Mixture:
    """A :class:`Mixture` of ``sources``: ``{name: family}``, or a list of families named by their ``name``.

    Example:
        >>> from metalearn.tasks import Sinusoid
        >>> family = mix({"narrow": Sinusoid(amplitude=(0.1, 1.0)), "wide": Sinusoid()}, weights=[1, 3])
        >>> family.weights
        {'narrow': 0.25, 'wide': 0.75}
    """
    if not isinstance(sources, Mapping):
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            raise ValueError(f"mix() takes {{name: family}} or a list of families, not {type(sources).__name__}")
        named: dict[str, Any] = {}
        for i, family in enumerate(sources):
            key = getattr(family, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"source {i} ({family!r}) has no name; pass a mapping {{name: family}} instead of a "
                                 "list")
            if key in named:
                raise ValueError(f"mixture {name!r} lists the source {key!r} twice; list each source once "
                                 "(give it more weight instead)")
            named[key] = family
        sources = named
    return Mixture(sources, weights, name)


def _probabilities(names: list[str], weights: Weights, mixture: str) -> np.ndarray:
    """Validated weights, normalized to sum to 1, in the order of ``names``."""
    if weights is None:
        return np.full(len(names), 1.0 / len(names))
    if isinstance(weights, Mapping):
        unknown, missing = sorted(set(weights) - set(names)), [n for n in names if n not in weights]
        if unknown or missing:
            raise ValueError(f"mixture {mixture!r}: weights name {sorted(weights)} but the sources are {names}"
                             + (f"; unknown {unknown}" if unknown else "")
                             + (f"; missing {missing}" if missing else ""))
        weights = [weights[n] for n in names]
    values = list(weights) if isinstance(weights, Sequence) and not isinstance(weights, str) else None
    if values is None:
        raise ValueError(f"mixture {mixture!r}: weights={weights!r} is invalid; give one number per source {names}")
    if len(values) != len(names):
        raise ValueError(f"mixture {mixture!r}: {len(values)} weights for {len(names)} sources {names}; "
                         "give exactly one weight per source")
    bad = [w for w in values if isinstance(w, bool) or not isinstance(w, (int, float, np.number))
           or not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"mixture {mixture!r}: weights {values} include {bad[0]!r}; every weight must be a finite "
                         "number >= 0")
    total = float(sum(values))
    if total <= 0:
        raise ValueError(f"mixture {mixture!r}: weights {values} are all zero; give at least one source a positive "
                         "weight")
    return np.asarray(values, dtype=float) / total


def check_target(sources: Union[Mixture, Sequence[str]], target: str) -> None:
    """Refuse a leave-one-out target that is also one of the meta-training sources (named)."""
    names = list(sources.sources) if isinstance(sources, Mixture) else list(sources)
    if target in names:
        raise ValueError(f"target {target!r} is also a source {list(names)}: a leave-one-out target must be held "
                         "out of meta-training; drop it from the sources (Mixture.without)")
