"""Letter-substitution ciphers: a family where K examples reveal a rule that nothing else reveals.

Every task is one substitution table over a small alphabet (``abcdef`` by default), applied letter by
letter: with the table ``a->c, b->a, c->f, d->b, e->d, f->e`` the prompt ``"abcd="`` has the completion
``"cafb\\n"``. The tables are of three kinds: a Caesar shift (``x -> x + k``), an affine map
(``x -> a*x + b mod n``, ``a != 1`` coprime with ``n``) and a random permutation. Meta-splits are
disjoint by table, split per kind (so the test split holds new shifts, new affine maps and new
permutations, never one seen in training).

Why the family is a fair test of few-shot learning:

* **Solvable from the support set.** The K support inputs together contain every letter of the
  alphabet (``cover=True``; letters that a random draw missed are written over letters that occur more
  than once), so the support set shows the whole table and every query is determined by it.
* **Impossible without it.** A held-out table is none of the train tables, and every query input differs
  from every support input (no answer can be copied from the support set). Guessing a table gets a query
  of L letters right with probability about ``(1/n)^L``.

``table(rule_id)`` returns a table as the images of the alphabet in order (``"cafbde"``), for code that
wants to show it (a pretraining script may write it into its own training text; the family itself
knows nothing of models).
"""
from __future__ import annotations

import itertools
import math
import string
from typing import Sequence

import numpy as np

from .splits import as_range, check_split, draw, split_by_fractions
from .task import SPLITS, Task

__all__ = ["KINDS", "Substitution"]

KINDS = ("affine", "caesar", "permute")


class Substitution:
    """Letter-substitution tasks, one table per task; see the module docstring.

    Args:
        rules: table kinds to use (``caesar``, ``affine``, ``permute``).
        alphabet_size: letters ``a..`` in the alphabet (3..26).
        length: input string length, int or inclusive range.
        n_permutations: how many random permutations (neither shifts nor affine maps) become ``permute``
            tables; ``None``: all of them (``n! - 1 - ...``; only sensible for small alphabets).
        k_shot: support examples per episode.
        q_query: query examples per episode.
        splits: fractions (train, val, test) per kind.
        cover: make the support inputs contain every letter (the support set then reveals the table).
        sep: the prompt is ``input + sep``.
        terminator: the completion is ``output + terminator``.
        seed: fixes the permutations and which tables belong to which split.
    """

    kind = "generation"

    def __init__(self, rules: Sequence[str] = KINDS, *, alphabet_size: int = 6, length: int | Sequence[int] = 4,
                 n_permutations: int | None = 400, k_shot: int | Sequence[int] = 8, q_query: int = 8,
                 splits: Sequence[float] = (0.6, 0.2, 0.2), cover: bool = True, sep: str = "=",
                 terminator: str = "\n", seed: int = 0) -> None:
        unknown = [r for r in rules if r not in KINDS]
        if unknown or not rules:
            raise ValueError(f"unknown table kind(s) {unknown}; choose from {list(KINDS)}")
        if not 3 <= alphabet_size <= 26:
            raise ValueError(f"alphabet_size={alphabet_size} is invalid; use 3..26 letters")
        self.alphabet = string.ascii_lowercase[:alphabet_size]
        self.length, self._shots = as_range(length, "length"), as_range(k_shot, "k_shot")
        self.k_shot, self.q_query, self.cover, self.seed = k_shot, int(q_query), bool(cover), seed
        self.sep, self.terminator = sep, terminator
        if self.q_query < 1:
            raise ValueError(f"q_query={q_query} is invalid; sample at least one query")
        if self.cover and self._shots[0] * self.length[0] < alphabet_size:
            raise ValueError(f"cover=True needs k_shot x length >= alphabet_size so the support inputs can hold "
                             f"every letter; got k_shot={k_shot}, length={length}, alphabet_size={alphabet_size}: "
                             "raise k_shot or length, or set cover=False")
        if len(self.alphabet) ** self.length[0] < self._shots[1] + self.q_query:
            raise ValueError(f"only {len(self.alphabet) ** self.length[0]} distinct inputs of length "
                             f"{self.length[0]}; raise length or alphabet_size, or lower k_shot + q_query")
        fractions = dict(zip(SPLITS, splits))
        if len(fractions) != 3 or abs(sum(fractions.values()) - 1) > 1e-6 or min(fractions.values()) < 0:
            raise ValueError(f"splits={splits!r} is invalid; give three fractions summing to 1")
        rng = np.random.default_rng(seed)
        self._tables: dict[str, str] = {}
        self._kind: dict[str, str] = {}
        self._split: dict[str, list[str]] = {s: [] for s in SPLITS}
        taken = {self.alphabet}  # the identity is no rule
        for kind in sorted(set(rules)):
            tables = [t for t in self._generate(kind, rng, n_permutations) if t not in taken]
            taken.update(tables)
            ids = [self._add(kind, t) for t in tables]
            ids = [ids[i] for i in rng.permutation(len(ids))]
            if len(ids) < 3:
                raise ValueError(f"table kind {kind!r} has {len(ids)} tables with alphabet_size={alphabet_size}; "
                                 "every kind needs 3 or more to give each split one: use more letters or drop it")
            for split, part in split_by_fractions(ids, fractions).items():
                self._split[split] += part

    def _generate(self, kind: str, rng: np.random.Generator, n_permutations: int | None) -> list[str]:
        a, n = self.alphabet, len(self.alphabet)
        if kind == "caesar":
            return ["".join(a[(i + k) % n] for i in range(n)) for k in range(1, n)]
        if kind == "affine":
            return ["".join(a[(m * i + b) % n] for i in range(n)) for m in range(2, n) if math.gcd(m, n) == 1
                    for b in range(n)]
        # permutations that are no shift or affine map: every one for small alphabets, else random draws
        structured = set(self._generate("caesar", rng, 0) + self._generate("affine", rng, 0)) | {a}
        if n_permutations is None:
            if n > 8:
                raise ValueError(f"n_permutations=None lists all {math.factorial(n)} permutations; give a number "
                                 f"for alphabet_size={n}")
            pool = ["".join(p) for p in itertools.permutations(a)]
            return [t for t in pool if t not in structured]
        out: dict[str, None] = {}
        for _ in range(50 * max(n_permutations, 1)):
            if len(out) >= n_permutations:
                break
            t = "".join(a[i] for i in rng.permutation(n))
            if t not in structured:
                out[t] = None
        return sorted(out)

    def _add(self, kind: str, table: str) -> str:
        rid = f"{kind}({table})"
        self._tables[rid], self._kind[rid] = table, kind
        return rid

    def __repr__(self) -> str:
        sizes = {s: len(r) for s, r in self._split.items()}
        return (f"Substitution(alphabet={self.alphabet!r}, length={self.length}, k_shot={self.k_shot}, "
                f"tables={sizes})")

    def rules(self, split: str) -> list[str]:
        """Table ids of meta-split ``split``, e.g. ``"caesar(bcdefa)"``."""
        check_split(split)
        return sorted(self._split[split])

    tasks = rules

    def table(self, rule_id: str) -> str:
        """The table of ``rule_id``: the images of the alphabet's letters, in alphabet order."""
        if rule_id not in self._tables:
            raise KeyError(f"no table {rule_id!r}; see rules('train'|'val'|'test')")
        return self._tables[rule_id]

    def apply(self, rule_id: str, s: str) -> str:
        """``s`` written through table ``rule_id`` (without the terminator)."""
        table = self.table(rule_id)
        return "".join(table[self.alphabet.index(c)] for c in s)

    def _strings(self, n: int, rng: np.random.Generator, avoid: set) -> list[str]:
        """``n`` distinct random strings not in ``avoid``."""
        out: list[str] = []
        seen = set(avoid)
        while len(out) < n:
            s = "".join(self.alphabet[i] for i in rng.integers(len(self.alphabet), size=draw(self.length, rng)))
            if s not in seen:
                seen.add(s)
                out.append(s)
        return out

    def _cover(self, inputs: list[str], rng: np.random.Generator) -> list[str]:
        """Write every missing letter over a letter that occurs more than once (inputs stay distinct)."""
        rows = [list(s) for s in inputs]
        for _ in range(100 * len(self.alphabet)):
            counts = {c: 0 for c in self.alphabet}
            for row in rows:
                for c in row:
                    counts[c] += 1
            missing = [c for c in self.alphabet if counts[c] == 0]
            if not missing:
                break
            spots = [(i, j) for i, row in enumerate(rows) for j, c in enumerate(row) if counts[c] > 1]
            i, j = spots[int(rng.integers(len(spots)))]
            candidate = rows[i][:j] + [missing[0]] + rows[i][j + 1:]
            if "".join(candidate) not in {"".join(r) for r in rows}:
                rows[i] = candidate
        out = ["".join(r) for r in rows]
        if set("".join(out)) != set(self.alphabet):
            raise RuntimeError(f"could not cover the alphabet with support inputs {out}")  # cannot happen: checked
        return out

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """One episode: a table of ``split`` (kind first, then a table of it) on K support and Q query inputs."""
        check_split(split)
        kinds = sorted({self._kind[r] for r in self._split[split]})
        kind = kinds[int(rng.integers(len(kinds)))]
        ids = [r for r in self._split[split] if self._kind[r] == kind]
        rid = ids[int(rng.integers(len(ids)))]
        k = draw(self._shots, rng)
        support = self._strings(k, rng, set())
        if self.cover:
            support = self._cover(support, rng)
        query = self._strings(self.q_query, rng, set(support))
        def column(inputs: list[str]) -> dict:
            return {"prompt": [s + self.sep for s in inputs],
                    "completion": [self.apply(rid, s) + self.terminator for s in inputs]}
        return Task(support=column(support), query=column(query), kind=self.kind,
                    task_id=f"substitution/{split}/{rid}", template="{input}" + self.sep,
                    meta={"split": split, "rule": kind, "rule_id": rid, "table": self.table(rid), "k_shot": k})
