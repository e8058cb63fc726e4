"""The work of one ``evaluate`` call, method by method: adapt along trajectories, score, record.

* Adapting methods (each Learner, ``random_init``): the inner learning rate of every step count is
  picked on val episodes (``adaptation.tune``); step counts that got the same multiplier share one
  trajectory per test episode, scored at each count. Step 0 scores the init.
* Test episodes of an adapting method can run in ``workers`` forked processes (``workers.forked_map``).
* Non-adapting baselines: scored once per episode, repeated across step counts.
* With ``reuse`` on an encoder's classification tasks, the frozen baselines and every learner's step 0
  read pooled features from a per-method ``features.FeatureCache`` (each text encoded once per run).
  ``reuse=False`` is the original path: every step count adapted from scratch, every episode encoded.
"""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Any, Optional, Sequence

import torch

from ..learner import Episode, Learner
from ..tasks.task import Task
from . import baselines as bl
from .adaptation import trajectories, tune
from .features import FeatureCache, step0_scores
from .score import decode_budget, score_params
from .setfit_baseline import SetFitOptions
from .workers import forked_map

__all__ = ["BY_LENGTH", "Run", "split_episode", "support_episode"]

BY_LENGTH = 24
"""With ``reuse``, encoder query sets are scored in batches of at most this many texts of similar length."""


@dataclasses.dataclass
class Run:
    """Settings shared by every method of one evaluation, and the feature caches it fills."""

    steps: Sequence[int]
    tune: bool
    lr_grid: Optional[Sequence[float]]
    generate: bool
    max_new_tokens: Optional[int]
    reuse: bool
    episode_batch: int
    bar: Any
    workers: int = 1  # forked processes adapting and scoring the test episodes (``workers.forked_map``)
    caches: dict = dataclasses.field(default_factory=dict)  # method name -> FeatureCache
    timing: list = dataclasses.field(default_factory=list)  # {method, shots, steps, episode, seconds} per record
    setfit: Optional[SetFitOptions] = None  # the SetFit baseline's options
    seed: int = 0  # seeds the per-episode training of SetFit (seed + episode)

    def adapting(self, name: str, learner: Learner, shots: Any, vals: list[Task], tests: list[Task],
                 tuning: list[dict]) -> list[dict]:
        """Records of an adapting method on every test task and step count (tuning rows appended to ``tuning``)."""
        scales = {s: 1.0 for s in self.steps}
        tuned = [s for s in self.steps if s > 0] if self.tune else []
        if tuned:
            self.bar.set_description(f"tune lr {name} K={shots}", refresh=False)
            val_eps = [(t, support_episode(learner, t)) for t in vals]
            for s, (scale, metric, scores, losses) in tune(learner, val_eps, tuned, self.lr_grid, self.reuse,
                                                           self.episode_batch, self.workers).items():
                scales[s] = scale
                tuning.append({"method": name, "shots": shots, "steps": s, "scale": scale,
                               "lr": scale * learner.config.inner.lr,
                               "learned_step_sizes": bool(learner.config.inner.learn_step_sizes),
                               "metric": metric, "val_score": {str(g): v for g, v in scores.items()},
                               "val_loss": {str(g): v for g, v in losses.items()}})
        cached = self.reuse and _features_apply(learner, tests)
        counts = [s for s in self.steps if not (cached and s == 0)]
        records: dict[tuple[int, int], dict] = {}
        if cached and 0 in self.steps:
            cache = self._cache(name, learner)
            prototype = learner.config.adapter.head == "prototype"
            for i, task in enumerate(tests):
                start = time.perf_counter()
                records[0, i] = _record(name, shots, 0, i, task, step0_scores(cache, learner.init, task, prototype))
                self._time(records[0, i], time.perf_counter() - start)
                self.bar.update(1)
        test_eps = [support_episode(learner, t) for t in tests]
        size = max(self.episode_batch, 1)
        chunks = [range(start, min(start + size, len(tests))) for start in range(0, len(tests), size)]
        for group in _by_scale(counts, scales, self.reuse):
            self.bar.set_description(f"{name} K={shots} steps={group}", refresh=False)

            def adapt_and_score(chunk: range, group: list[int] = group) -> list[tuple[tuple[int, int], dict, float]]:
                start = time.perf_counter()
                snapshots = trajectories(learner, [test_eps[i] for i in chunk], group, scales[group[-1]],
                                         self.episode_batch, self.reuse)
                adapting = (time.perf_counter() - start) / len(chunk)  # one trajectory to the group's last count
                out = []
                for i, snap in zip(chunk, snapshots):
                    task = tests[i]
                    budget = self.max_new_tokens or _budget(learner, task)
                    for s in group:
                        start = time.perf_counter()
                        scores = score_params(learner, snap[s], task, generate=self.generate,
                                              max_new_tokens=budget, by_length=BY_LENGTH if self.reuse else None)
                        out.append(((s, i), _record(name, shots, s, i, task, scores),
                                    adapting + time.perf_counter() - start))
                return out

            for done in forked_map(adapt_and_score, chunks, self.workers):
                for key, record, seconds in done:
                    records[key] = record
                    self._time(record, seconds)
                self.bar.update(len(done))
        return [records[s, i] for s in self.steps for i in range(len(tests))]

    def frozen(self, names: Sequence[str], base: Learner, shots: Any, tests: list[Task]) -> list[dict]:
        """Records of the non-adapting baselines (one score per episode, repeated for every step count)."""
        records = []
        for name in names:
            self.bar.set_description(f"{name} K={shots}", refresh=False)
            if name == "setfit":
                records += self._setfit(base, shots, tests)
                continue
            cached = self.reuse and name in bl.FEATURE_BASELINES and _features_apply(base, tests)
            for i, task in enumerate(tests):
                start = time.perf_counter()
                if cached:
                    cache = self._cache("", base, frozen=True)
                    device = cache.model.device
                    scores = bl.feature_scores(name, cache.model, cache(list(task.support["text"])),
                                               _long(task.support["label"], device), cache(list(task.query["text"])),
                                               _long(task.query["label"], device), task.n_way)
                else:
                    budget = self.max_new_tokens or _budget(base, task)
                    scores = bl.frozen_scores(name, base, task, generate=self.generate, max_new_tokens=budget)
                seconds = time.perf_counter() - start
                for s in self.steps:
                    records.append(_record(name, shots, s, i, task, scores))
                    self._time(records[-1], seconds)
                self.bar.update(1)
        return records

    def _setfit(self, base: Learner, shots: Any, tests: list[Task]) -> list[dict]:
        """SetFit on every test task, ``workers`` episodes at a time (it trains a model per episode)."""
        options = self.setfit or SetFitOptions()

        def one(i: int) -> tuple[dict, float]:
            start = time.perf_counter()
            scores = bl.setfit_episode(base, tests[i], options, self.seed + i)
            return scores, time.perf_counter() - start

        records = []
        for i, (scores, seconds) in enumerate(forked_map(one, list(range(len(tests))), self.workers)):
            for s in self.steps:
                records.append(_record("setfit", shots, s, i, tests[i], scores))
                self._time(records[-1], seconds)
            self.bar.update(1)
        return records

    def _time(self, record: dict, seconds: float) -> None:
        self.timing.append({k: record[k] for k in ("method", "shots", "steps", "episode")} | {"seconds": seconds})

    def _cache(self, name: str, learner: Learner, frozen: bool = False) -> FeatureCache:
        """The run's feature cache of one method (or of the frozen base), made on first use."""
        key = ("frozen", id(learner.model)) if frozen else ("method", name)
        if key not in self.caches:
            if frozen:
                with learner.frozen() as model:  # a TaskModel over the base, adapters switched off
                    self.caches[key] = FeatureCache(model, {}, context=lambda: learner.frozen())
            else:
                self.caches[key] = FeatureCache(learner.model, learner.init)
        return self.caches[key]


def support_episode(learner: Learner, task: Task) -> Episode:
    """The episode adaptation sees: the support set only (its 'query' is the support set again)."""
    return learner.episode(dataclasses.replace(task, query=task.support))


def split_episode(learner: Learner, task: Task) -> tuple[Episode, Any]:
    """The support-only episode and the encoded query (for the val loss of the learning-rate search)."""
    return support_episode(learner, task), learner.model.encode(task.query, task.kind)


def _by_scale(counts: Sequence[int], scales: dict[int, float], reuse: bool) -> list[list[int]]:
    """Step counts grouped into trajectories: those sharing a step size together (``reuse``), else one each.

    Step 0 is the init whatever the step size, so it rides along with the first trajectory.
    """
    if not reuse:
        return [[s] for s in counts]
    groups: dict[float, list[int]] = defaultdict(list)
    for s in counts:
        if s > 0:
            groups[scales[s]].append(s)
    out = [sorted(g) for g in groups.values()]
    if 0 in counts:
        out = [[0] + out[0]] + out[1:] if out else [[0]]
    return out


def _features_apply(learner: Learner, tests: list[Task]) -> bool:
    """Whether the feature cache serves these tasks: an encoder's text classification."""
    return learner.model.model_type == "encoder" and all(t.kind == "classification" and "text" in t.support
                                                         for t in tests)


def _long(labels, device) -> torch.Tensor:
    return torch.as_tensor(labels).long().to(device)


def _budget(learner: Learner, task: Task) -> int:
    return decode_budget(task, learner.model.tokenizer) if task.kind == "generation" else 0


def _record(name: str, shots: Any, steps: int, episode: int, task: Task, scores: dict) -> dict:
    return {"method": name, "shots": shots, "steps": steps, "episode": episode, "task_id": task.task_id, **scores}
