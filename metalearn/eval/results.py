"""``EvalResults``: what ``evaluate`` measured, its summaries and its paired differences.

Plain data (one record per method, shot count, step count and episode) with the two reductions every
report reads: ``summarize`` (mean and 95% interval per method) and ``paired_differences`` (per-episode
``method - reference`` over the same episodes, with their own interval). ``save``/``load`` round-trip
through plain JSON; nothing loaded can run code.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from . import metrics
from .report import markdown, write_all

__all__ = ["EvalResults", "paired_differences", "summarize"]


@dataclass
class EvalResults:
    """Everything ``evaluate`` measured. ``records`` holds one row per (method, shots, steps, episode).

    ``timing`` holds the wall seconds of each record's adaptation and scoring (kept apart from the scores,
    which are reproducible where seconds are not); see :meth:`seconds`.
    """

    records: list[dict]
    summary: list[dict]
    paired: list[dict]
    tuning: list[dict]
    settings: dict
    histories: dict[str, list[dict]] = field(default_factory=dict)
    timing: list[dict] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(self.settings["methods"])

    def _find(self, rows: list[dict], **match: Any) -> dict:
        hits = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} results match {match}")
        return hits[0]

    def score(self, method: str, metric: str, steps: int, shots: Optional[int] = None) -> tuple[float, float]:
        """(mean, 95% half-width) of ``metric`` for ``method`` after ``steps`` inner steps."""
        shots = self.settings["shots"][0] if shots is None else shots
        row = self._find(self.summary, method=method, metric=metric, steps=steps, shots=shots)
        return row["mean"], row["ci95"]

    def seconds(self, method: str, steps: int, shots: Optional[int] = None) -> tuple[float, float]:
        """(mean, 95% half-width) wall seconds per episode to adapt ``method`` for ``steps`` steps and score it.

        Adapting methods: the episode's share of one trajectory to the largest step count scored with the same
        step size, plus scoring at ``steps``. Texts whose frozen features a run caches are encoded once per run,
        outside these seconds (``reuse=False`` times every encoding).
        """
        shots = self.settings["shots"][0] if shots is None else shots
        rows = [t["seconds"] for t in self.timing if t["method"] == method and t["steps"] == steps and t["shots"] == shots]
        if not rows:
            raise KeyError(f"no timing for method={method!r}, steps={steps}, shots={shots}")
        return metrics.mean_ci(rows)

    def diff(self, method: str, metric: str, steps: int, shots: Optional[int] = None) -> tuple[float, float]:
        """Paired (mean, 95% half-width) of ``metric(method) - metric(reference)`` over the same episodes."""
        shots = self.settings["shots"][0] if shots is None else shots
        row = self._find(self.paired, method=method, metric=metric, steps=steps, shots=shots)
        return row["mean_diff"], row["ci95"]

    def table(self, metric: Union[str, Sequence[str], None] = None, seconds: bool = True) -> str:
        """A markdown report: ``metric`` (default: the kind's primary one; or a list) per method and step count,
        and (``seconds``) the wall seconds per episode, which differ from run to run where scores do not."""
        return markdown(self, metric, seconds)

    def save(self, output_dir: str) -> dict[str, str]:
        """Write JSON, CSV, markdown and PNG plots into ``output_dir``; return {what: path}."""
        return write_all(self, output_dir)

    @classmethod
    def load(cls, output_dir: str) -> "EvalResults":
        """The results ``save`` wrote to ``output_dir`` (its results.json: plain JSON, nothing is executed).

        Summaries and paired differences are recomputed from the episode records, as ``evaluate`` computed
        them; a metric saved as null (NaN) reads back as NaN. Training histories are not saved.
        """
        path = os.path.join(output_dir, "results.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: give the folder that EvalResults.save (or "
                                    "evaluate(..., output_dir=...)) wrote")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        missing = sorted({"settings", "records", "tuning"} - set(saved)) if isinstance(saved, dict) else ["settings"]
        if missing:
            raise ValueError(f"{path} is not a results file that EvalResults.save wrote (no {', '.join(missing)})")
        records = [{k: float("nan") if v is None and k in metrics.HIGHER_IS_BETTER else v for k, v in r.items()}
                   for r in saved["records"]]
        settings = saved["settings"]
        return cls(records, summarize(records), paired_differences(records, settings.get("reference")),
                   saved["tuning"], settings, timing=saved.get("timing", []))

    def without(self, method: str) -> "EvalResults":
        """These results less ``method`` (say a guarded method, to add it again with another guard)."""
        if method not in self.methods:
            raise ValueError(f"no method {method!r} in these results; they hold {self.methods}")
        records = [r for r in self.records if r["method"] != method]
        settings = {**self.settings, "methods": [m for m in self.methods if m != method]}
        timing = [t for t in self.timing if t["method"] != method]
        return EvalResults(records, summarize(records), paired_differences(records, settings.get("reference")),
                           self.tuning, settings, self.histories, timing)


def summarize(records: list[dict]) -> list[dict]:
    """Mean and 95% half-width per (method, shots, steps, metric) over episodes."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["shots"], r["steps"])].append(r)
    out = []
    for (method, shots, steps), rows in groups.items():
        for metric in _metrics_of(rows):
            mean, ci = metrics.mean_ci([r[metric] for r in rows])
            out.append({"method": method, "shots": shots, "steps": steps, "metric": metric, "mean": mean,
                        "ci95": ci, "n": len(rows)})
    return out


def paired_differences(records: list[dict], reference: Optional[str]) -> list[dict]:
    """Per-episode ``method - reference`` differences, averaged with a 95% interval (same episodes)."""
    if reference is None:
        return []
    by_key: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        by_key[(r["method"], r["shots"], r["steps"])][r["episode"]] = r
    out = []
    for (method, shots, steps), rows in by_key.items():
        ref = by_key.get((reference, shots, steps))
        if method == reference or not ref:
            continue
        episodes = sorted(set(rows) & set(ref))
        for ep in episodes:
            if rows[ep]["task_id"] != ref[ep]["task_id"]:
                raise RuntimeError(f"episode {ep} differs between {method!r} and {reference!r}: not paired")
        for metric in _metrics_of([rows[e] for e in episodes] + [ref[e] for e in episodes]):
            mean, ci = metrics.paired_ci([rows[e][metric] for e in episodes], [ref[e][metric] for e in episodes])
            out.append({"method": method, "reference": reference, "shots": shots, "steps": steps, "metric": metric,
                        "mean_diff": mean, "ci95": ci, "n": len(episodes)})
    return out


def _metrics_of(rows: list[dict]) -> list[str]:
    common = set.intersection(*(set(r) for r in rows)) if rows else set()
    return [m for m in metrics.HIGHER_IS_BETTER if m in common]
