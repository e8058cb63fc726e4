"""Sinusoid settings and the character-level text rules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metalearn.tasks import RULES, SPLITS, Sinusoid, TextRules
from metalearn.tasks.procedural import apply_rule


def test_sinusoid_follows_the_maml_settings():
    fam = Sinusoid(k_shot=5, q_query=7)
    rng = np.random.default_rng(0)
    amps, phases = [], []
    for split in SPLITS:
        for _ in range(50):
            task = fam.sample(split, rng)
            x, y = task.support["x"], task.support["y"]
            assert x.shape == (5, 1) and y.shape == (5, 1) and task.query["x"].shape == (7, 1)
            assert x.dtype == torch.float32 and y.dtype == torch.float32
            a, p = task.meta["amplitude"], task.meta["phase"]
            assert 0.1 <= a <= 5.0 and 0.0 <= p <= math.pi
            for part in (task.support, task.query):
                assert float(part["x"].abs().max()) <= 5.0
                assert torch.allclose(part["y"], a * torch.sin(part["x"] - p), atol=1e-5)
            amps.append(a)
            phases.append(p)
    assert min(amps) < 1.0 and max(amps) > 4.0 and max(phases) - min(phases) > 2.0


def test_sinusoid_splits_are_separate_streams():
    fam = Sinusoid()
    a = [fam.sample(s, np.random.default_rng(5)).meta["amplitude"] for s in SPLITS]
    assert len(set(a)) == 3
    assert fam.sample("val", np.random.default_rng(5)).meta["amplitude"] == a[1]
    assert Sinusoid(seed=1).sample("val", np.random.default_rng(5)).meta["amplitude"] != a[1]


@pytest.mark.parametrize("rule, params, given, expected", [
    ("reverse", {}, "abc", "cba"),
    ("rotate", {"k": 1}, "abcd", "bcda"),
    ("rotate", {"k": -1}, "abcd", "dabc"),
    ("caesar", {"k": 2, "alphabet": "abcd"}, "abcd", "cdab"),
    ("duplicate", {}, "abc", "aabbcc"),
    ("sort", {}, "dbca", "abcd"),
    ("swap_pairs", {}, "abcde", "badce"),
    ("permute", {"table": "cadb", "alphabet": "abcd"}, "abd", "cab"),
    ("affine", {"a": 3, "b": 1, "m": 10}, "7", "2"),
    ("affine", {"a": 5, "b": 4, "m": 13}, "12", "12"),
])
def test_known_rules_compute_the_right_completion(rule, params, given, expected):
    assert apply_rule(rule, given, **params) == expected


def test_every_rule_kind_is_used_and_splits_are_disjoint_by_instance():
    fam = TextRules(seed=0)
    parts = {s: set(fam.rules(s)) for s in SPLITS}
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    kinds = {r.split("(")[0] for p in parts.values() for r in p}
    assert kinds == set(RULES)
    for many in ("caesar", "permute", "affine", "rotate"):
        assert all(any(r.startswith(many) for r in parts[s]) for s in SPLITS)


def test_one_rule_generates_support_and_query_consistently():
    fam = TextRules(length=(2, 5), alphabet_size=6, k_shot=4, q_query=6)
    rng = np.random.default_rng(1)
    kinds = set()
    for split in SPLITS:
        for _ in range(40):
            task = fam.sample(split, rng)
            rid = task.meta["rule_id"]
            assert rid in fam.rules(split)
            kinds.add(task.meta["rule"])
            for part in (task.support, task.query):
                for prompt, completion in zip(part["prompt"], part["completion"]):
                    assert prompt.isascii() and prompt.endswith("=") and completion.endswith("\n")
                    given = prompt[:-1]
                    assert completion == fam.apply(rid, given) + "\n"
                    if task.meta["rule"] != "affine":
                        assert 2 <= len(given) <= 5 and set(given) <= set("abcdef")
                    else:
                        assert 0 <= int(given) < 10
            assert len(task.support["prompt"]) == 4 and len(task.query["prompt"]) == 6
    assert len(kinds) >= 6


def test_text_rules_use_distinct_inputs_and_honour_difficulty():
    fam = TextRules(rules=["caesar"], length=4, alphabet_size=4, k_shot=5, q_query=5)
    assert fam.alphabet == "abcd" and [len(fam.rules(s)) for s in SPLITS] == [1, 1, 1]
    task = fam.sample("train", np.random.default_rng(0))
    prompts = task.support["prompt"] + task.query["prompt"]
    assert len(set(prompts)) == len(prompts) and all(len(p) == 5 for p in prompts)


def test_affine_instances_cover_all_units():
    fam = TextRules(rules=["affine"], modulus=7)
    total = sum(len(fam.rules(s)) for s in SPLITS)
    assert total == 6 * 7 - 1  # a in 1..6 (all units mod 7), b in 0..6, without the identity


def test_a_rule_can_be_read_off_the_support_set():
    """Learnability: the support pairs pin down a Caesar shift, which then predicts every query."""
    fam = TextRules(rules=["caesar"], alphabet_size=8, k_shot=2, q_query=6)
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for _ in range(5):
            task = fam.sample(split, rng)
            src, dst = task.support["prompt"][0][0], task.support["completion"][0][0]
            k = (fam.alphabet.index(dst) - fam.alphabet.index(src)) % len(fam.alphabet)
            for prompt, completion in zip(task.query["prompt"], task.query["completion"]):
                assert completion == apply_rule("caesar", prompt[:-1], k=k, alphabet=fam.alphabet) + "\n"
