"""Families that need no data: sinusoid regression and character-level text rules.

``Sinusoid`` follows Finn et al. 2017 (MAML, sec. 5.1): ``y = A sin(x - phase)``, amplitude
``A ~ U[0.1, 5]``, phase ``~ U[0, pi]``, ``x ~ U[-5, 5]``. Its tasks form a continuum, so meta-splits
cannot be disjoint: each split is its own random stream (the rng passed to ``sample`` is mixed with the
split and the family's seed), which keeps train/val/test episodes different but from one distribution.

``TextRules`` is a family a tiny byte-level LM can learn from scratch: every task is one rule instance
(reverse, rotate by k, Caesar shift by k, duplicate characters, sort, swap adjacent pairs, a random
permutation of the alphabet, or ``x -> (a*x + b) mod m`` on decimal numbers); prompts are short ASCII
strings like ``"abc="`` with completion ``"cba\\n"``. Meta-splits are disjoint by rule instance.
"""
from __future__ import annotations

import math
import string
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .splits import as_range, check_split, draw, split_by_fractions
from .task import SPLITS, Task

__all__ = ["RULES", "Sinusoid", "TextRules", "apply_rule"]


class Sinusoid:
    """Sinusoid regression tasks (Finn et al. 2017); x and y are float32 tensors of shape (n, 1)."""

    kind = "regression"

    def __init__(self, k_shot: int | Sequence[int] = 5, q_query: int = 10,
                 amplitude: Sequence[float] = (0.1, 5.0), phase: Sequence[float] = (0.0, math.pi),
                 x_range: Sequence[float] = (-5.0, 5.0), seed: int = 0) -> None:
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"{name}={(lo, hi)!r} is invalid; give (low, high) with low <= high")
        self.k_shot, self.q_query, self.seed = k_shot, int(q_query), seed
        self._shots = as_range(k_shot, "k_shot")
        if self.q_query < 1:
            raise ValueError(f"q_query={q_query} is invalid; sample at least one query point")
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)

    def __repr__(self) -> str:
        return f"Sinusoid(k_shot={self.k_shot}, q_query={self.q_query}, amplitude={self.amplitude})"

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """One sine task; ``split`` selects an independent random stream."""
        check_split(split)
        sub = np.random.default_rng([int(rng.integers(2**62)), SPLITS.index(split), self.seed])
        a, p = sub.uniform(*self.amplitude), sub.uniform(*self.phase)
        k = draw(self._shots, sub)
        x = sub.uniform(*self.x_range, size=(k + self.q_query, 1)).astype(np.float32)
        y = (a * np.sin(x - p)).astype(np.float32)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        return Task(
            support={"x": xt[:k], "y": yt[:k]}, query={"x": xt[k:], "y": yt[k:]}, kind=self.kind,
            task_id=f"sinusoid/{split}/A={a:.3f},phase={p:.3f}",
            meta={"split": split, "amplitude": float(a), "phase": float(p), "k_shot": k},
        )


# ---------------------------------------------------------------- text rules


def _rotate(s: str, k: int) -> str:
    k %= len(s)
    return s[k:] + s[:k]


def _shift(s: str, k: int, alphabet: str) -> str:
    return "".join(alphabet[(alphabet.index(c) + k) % len(alphabet)] for c in s)


def _swap_pairs(s: str) -> str:
    out = list(s)
    for i in range(0, len(s) - 1, 2):
        out[i], out[i + 1] = out[i + 1], out[i]
    return "".join(out)


RULES: dict[str, Callable[..., str]] = {
    "affine": lambda s, a, b, m, **_: str((a * int(s) + b) % m),
    "caesar": lambda s, k, alphabet, **_: _shift(s, k, alphabet),
    "duplicate": lambda s, **_: "".join(c + c for c in s),
    "permute": lambda s, table, alphabet, **_: "".join(table[alphabet.index(c)] for c in s),
    "reverse": lambda s, **_: s[::-1],
    "rotate": lambda s, k, **_: _rotate(s, k),
    "sort": lambda s, **_: "".join(sorted(s)),
    "swap_pairs": lambda s, **_: _swap_pairs(s),
}


def apply_rule(rule: str, s: str, **params: Any) -> str:
    """Apply rule ``rule`` with its parameters to the input string ``s``."""
    return RULES[rule](s, **params)


class TextRules:
    """Character-level string-transformation tasks, one rule instance per task.

    Args:
        rules: which rule kinds to use (keys of ``RULES``).
        length: input string length, int or inclusive range (difficulty).
        alphabet_size: letters ``a..`` used in inputs (difficulty; at most 26).
        modulus: m of the affine rule; inputs are 0..m-1 written in decimal.
        n_permutations: how many random alphabet permutations become ``permute`` instances.
        k_shot: support examples per episode.
        q_query: query examples per episode.
        splits: fractions (train, val, test).
        sep: the prompt is ``input + sep``.
        terminator: the completion is ``output + terminator``.
        seed: fixes the permutations and which rule instances belong to which split.

    Rule kinds with 3 or more instances are split per kind (each split gets at least one);
    kinds with fewer (reverse, sort, duplicate, swap_pairs) go to train only. An episode picks a
    rule kind of its split uniformly, then one of that kind's instances.
    """

    kind = "generation"

    def __init__(self, rules: Sequence[str] = tuple(RULES), *, length: int | Sequence[int] = (3, 6),
                 alphabet_size: int = 8, modulus: int = 10, n_permutations: int = 32,
                 k_shot: int | Sequence[int] = 8, q_query: int = 8, splits: Sequence[float] = (0.6, 0.2, 0.2),
                 sep: str = "=", terminator: str = "\n", seed: int = 0) -> None:
        unknown = [r for r in rules if r not in RULES]
        if unknown or not rules:
            raise ValueError(f"unknown rule(s) {unknown}; choose from {sorted(RULES)}")
        if not 2 <= alphabet_size <= 26:
            raise ValueError(f"alphabet_size={alphabet_size} is invalid; use 2..26 letters")
        if modulus < 2:
            raise ValueError(f"modulus={modulus} is invalid; use m >= 2")
        self.length, self.alphabet = as_range(length, "length"), string.ascii_lowercase[:alphabet_size]
        self.modulus, self.k_shot, self.q_query, self.seed = modulus, k_shot, int(q_query), seed
        self.sep, self.terminator = sep, terminator
        self._shots = as_range(k_shot, "k_shot")
        fractions = dict(zip(SPLITS, splits))
        if len(fractions) != 3 or abs(sum(fractions.values()) - 1) > 1e-6 or min(fractions.values()) < 0:
            raise ValueError(f"splits={splits!r} is invalid; give three fractions summing to 1")
        rng = np.random.default_rng(seed)
        self._instances: dict[str, dict] = {}
        self._split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for rule in sorted(rules):
            ids = [self._add(rule, p) for p in self._params(rule, rng, n_permutations)]
            ids = [ids[i] for i in rng.permutation(len(ids))]
            if len(ids) < 3:
                self._split["train"] += ids
                continue
            for split, part in split_by_fractions(ids, fractions).items():
                self._split[split] += part
        for s in SPLITS:
            if not self._split[s]:
                raise ValueError(
                    f"text rules: split {s!r} has no rule instances with rules={list(rules)}; add a rule kind "
                    "with several instances (rotate, caesar, permute, affine)"
                )

    def _params(self, rule: str, rng: np.random.Generator, n_permutations: int) -> list[dict]:
        a, m = self.alphabet, self.modulus
        if rule == "rotate":
            top = max(1, self.length[0] - 1)
            return [{"k": k} for k in range(-top, top + 1) if k != 0]
        if rule == "caesar":
            return [{"k": k, "alphabet": a} for k in range(1, len(a))]
        if rule == "permute":
            tables = {"".join(a[i] for i in rng.permutation(len(a))) for _ in range(n_permutations)} - {a}
            return [{"table": t, "alphabet": a} for t in sorted(tables)]
        if rule == "affine":
            return [{"a": x, "b": b, "m": m} for x in range(1, m) if math.gcd(x, m) == 1
                    for b in range(m) if (x, b) != (1, 0)]
        return [{}]

    def _add(self, rule: str, params: dict) -> str:
        shown = {k: v for k, v in params.items() if k != "alphabet"}
        rid = rule + ("(" + ",".join(f"{k}={v}" for k, v in shown.items()) + ")" if shown else "")
        self._instances[rid] = {"rule": rule, "params": params}
        return rid

    def rules(self, split: str) -> list[str]:
        """Rule-instance ids of meta-split ``split`` (e.g. ``"caesar(k=3)"``)."""
        check_split(split)
        return sorted(self._split[split])

    tasks = rules

    def apply(self, rule_id: str, s: str) -> str:
        """The output of rule instance ``rule_id`` on input ``s`` (without terminator)."""
        inst = self._instances[rule_id]
        return apply_rule(inst["rule"], s, **inst["params"])

    def __repr__(self) -> str:
        sizes = {s: len(r) for s, r in self._split.items()}
        return f"TextRules(length={self.length}, alphabet={self.alphabet!r}, modulus={self.modulus}, rules={sizes})"

    def _inputs(self, rule: str, n: int, rng: np.random.Generator) -> list[str]:
        if rule == "affine":
            draw_one = lambda: str(int(rng.integers(self.modulus)))  # noqa: E731
            space = self.modulus
        else:
            def draw_one() -> str:
                size = draw(self.length, rng)
                return "".join(self.alphabet[i] for i in rng.integers(len(self.alphabet), size=size))
            space = len(self.alphabet) ** self.length[1]
        out: list[str] = []
        seen: set[str] = set()
        for _ in range(20 * n):  # distinct inputs where the input space allows it
            s = draw_one()
            if s not in seen or len(seen) >= space:
                seen.add(s)
                out.append(s)
            if len(out) == n:
                break
        while len(out) < n:
            out.append(draw_one())
        return out

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """One episode: a rule instance of ``split`` applied to K support and Q query inputs."""
        check_split(split)
        kinds = sorted({self._instances[r]["rule"] for r in self._split[split]})
        kind = kinds[int(rng.integers(len(kinds)))]  # kinds first, so 39 affine maps do not crowd out reverse
        ids = [r for r in self._split[split] if self._instances[r]["rule"] == kind]
        rid = ids[int(rng.integers(len(ids)))]
        inst = self._instances[rid]
        k = draw(self._shots, rng)
        inputs = self._inputs(inst["rule"], k + self.q_query, rng)
        prompts = [s + self.sep for s in inputs]
        completions = [self.apply(rid, s) + self.terminator for s in inputs]
        return Task(
            support={"prompt": prompts[:k], "completion": completions[:k]},
            query={"prompt": prompts[k:], "completion": completions[k:]},
            kind=self.kind, task_id=f"text_rules/{split}/{rid}", template="{input}" + self.sep,
            meta={"split": split, "rule": inst["rule"], "rule_id": rid, "k_shot": k},
        )
