"""The substitution family: table-disjoint splits, correct completions, solvable from the support set only."""
from __future__ import annotations

import numpy as np
import pytest

from metalearn.tasks import SPLITS, Substitution, check_family, load
from metalearn.tasks.substitution import KINDS


def _read_table(task) -> dict[str, str]:
    """A solver that knows nothing but the support set: align each input letter with its output letter."""
    table: dict[str, str] = {}
    for prompt, completion in zip(task.support["prompt"], task.support["completion"]):
        for x, y in zip(prompt[:-1], completion.strip()):
            assert table.setdefault(x, y) == y, "the support set contradicts itself"
    return table


def test_splits_are_disjoint_by_table_and_every_kind_is_held_out():
    fam = load("substitution")
    parts = {s: set(fam.rules(s)) for s in SPLITS}
    tables = {s: {fam.table(r) for r in parts[s]} for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not parts[a] & parts[b] and not tables[a] & tables[b], (a, b)
    for split in SPLITS:
        assert {r.split("(")[0] for r in parts[split]} == set(KINDS), split
    assert fam.alphabet not in set().union(*tables.values())  # the identity is no rule
    for rid in set().union(*parts.values()):
        assert sorted(fam.table(rid)) == sorted(fam.alphabet), rid  # every table is a permutation


@pytest.mark.parametrize("kind, table_of", [
    ("caesar", lambda i, n: [(i + k) % n for k in range(1, n)]),
    ("affine", lambda i, n: [(m * i + b) % n for m in range(2, n) if np.gcd(m, n) == 1 for b in range(n)]),
])
def test_structured_tables_are_exactly_the_shifts_and_affine_maps(kind, table_of):
    fam = Substitution(alphabet_size=7)
    n = 7
    expected = {"".join(fam.alphabet[j] for j in col) for col in zip(*[table_of(i, n) for i in range(n)])}
    got = {fam.table(r) for s in SPLITS for r in fam.rules(s) if r.startswith(kind)}
    assert got == expected


def test_completions_follow_the_table():
    fam = Substitution(rules=("caesar",), alphabet_size=5, length=(3, 5))
    rid = next(r for s in SPLITS for r in fam.rules(s) if fam.table(r) == "cdeab")  # shift by 2
    assert fam.apply(rid, "abe") == "cdb"
    rng = np.random.default_rng(0)
    for split in SPLITS:
        task = fam.sample(split, rng)
        table = task.meta["table"]
        for part in (task.support, task.query):
            for prompt, completion in zip(part["prompt"], part["completion"]):
                assert prompt.endswith("=") and completion.endswith("\n") and 3 <= len(prompt) - 1 <= 5
                assert completion[:-1] == "".join(table[fam.alphabet.index(c)] for c in prompt[:-1])


@pytest.mark.parametrize("settings", [{}, {"alphabet_size": 8, "k_shot": 3, "length": (3, 6)},
                                      {"k_shot": 2, "length": 3}])
def test_the_support_set_reveals_the_table_and_no_query_is_copied(settings):
    fam = load("substitution", **settings)
    rng = np.random.default_rng(1)
    for split in SPLITS:
        for _ in range(60):
            task = fam.sample(split, rng)
            support_inputs = [p[:-1] for p in task.support["prompt"]]
            assert set("".join(support_inputs)) == set(fam.alphabet)  # every letter is shown
            assert len(set(support_inputs)) == len(support_inputs)
            queries = [p[:-1] for p in task.query["prompt"]]
            assert not set(queries) & set(support_inputs) and len(set(queries)) == len(queries)
            table = _read_table(task)  # solvable: the support set alone gives every query's answer
            for prompt, completion in zip(task.query["prompt"], task.query["completion"]):
                assert "".join(table[c] for c in prompt[:-1]) + "\n" == completion


def test_held_out_tables_cannot_be_answered_from_training():
    fam = load("substitution")
    train = {fam.table(r) for r in fam.rules("train")}
    rng = np.random.default_rng(2)
    tasks = [fam.sample("test", rng) for _ in range(200)]
    assert all(t.meta["table"] not in train for t in tasks)
    # the best any fixed train table does on test queries: far from solving them
    queries = [(p[:-1], q[:-1]) for t in tasks for p, q in zip(t.query["prompt"], t.query["completion"])]
    best = max(np.mean([fam.apply(rid, x) == y for x, y in queries]) for rid in fam.rules("train"))
    assert best < 0.2


def test_family_contract_and_spec():
    fam = load("substitution", k_shot=5, q_query=3)
    check_family(fam)
    task = fam.sample("val", np.random.default_rng(0))
    assert len(task.support["prompt"]) == 5 and len(task.query["prompt"]) == 3
    assert task.task_id.startswith("substitution/val/") and task.meta["rule_id"] in fam.rules("val")
    assert "tables={'train': " in repr(fam)


@pytest.mark.parametrize("kwargs, match", [
    ({"rules": ("caesar", "rot13")}, "unknown table kind"),
    ({"alphabet_size": 2}, "alphabet_size=2 is invalid"),
    ({"k_shot": 1, "length": 3}, "cover=True needs k_shot x length >= alphabet_size"),
    ({"rules": ("caesar",), "alphabet_size": 3}, "has 2 tables"),
    ({"splits": (0.5, 0.5, 0.5)}, "splits="),
    ({"alphabet_size": 3, "length": 1, "k_shot": 3, "cover": False}, "distinct inputs"),
])
def test_bad_settings_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Substitution(**kwargs)
