"""The full-label protocol on the real shared data: every class, K shots from train, the whole test split as queries."""
from __future__ import annotations

import csv
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn.tasks import FullLabel, NWayKShot, Task, check_family, data_dir, load, sources
from metalearn.tasks.sources import HWU64_FOLD

CLINC = Path(data_dir()) / "clinc150" / "data" / "data_full.json"
HWU = Path(data_dir()) / "hwu64" / HWU64_FOLD


@functools.lru_cache(maxsize=None)
def family(name: str, **overrides) -> FullLabel:
    return load(name, **overrides)


@functools.lru_cache(maxsize=None)
def clinc_json() -> dict:
    with open(CLINC, encoding="utf-8") as f:
        return json.load(f)


def hwu_rows(part: str) -> list[tuple[str, str]]:
    """``(text, scenario_intent)`` of an HWU64 fold-1 part, read straight from the CSVs."""
    rows = []
    for file in sorted((HWU / part).glob("*.csv")):
        with open(file, encoding="utf-8", newline="") as f:
            rows += [(r["answer_from_anno"].strip(), f"{r['scenario']}_{r['intent']}")
                     for r in csv.DictReader(f, delimiter=";")]
    return rows


def pairs(part: dict, task: Task) -> list[tuple[str, str]]:
    return [(t, task.label_names[y]) for t, y in zip(part["text"], part["label"].tolist())]


def test_clinc150_test_task_is_150_way_with_the_whole_official_test_split():
    fam = family("clinc150_full")
    check_family(fam)
    task = fam.sample("test", np.random.default_rng(0))
    raw = clinc_json()
    assert task.n_way == 150 and len(task.label_names) == 150 == len({i for _, i in raw["train"]})
    assert pairs(task.query, task) == [tuple(r) for r in raw["test"]]  # every test row, file order, right label
    counts = torch.bincount(task.support["label"], minlength=150)
    assert counts.tolist() == [5] * 150
    train = {tuple(r) for r in raw["train"]}
    assert all(p in train for p in pairs(task.support, task))  # support rows (with their labels) are train rows
    assert not set(task.support["text"]) & set(task.query["text"])
    assert task.meta["protocol"] == "full_label" and task.meta["k_shot"] == 5 and task.meta["n_query"] == 4500
    assert task.meta["split"] == "test" and task.label_names == tuple(sorted(task.label_names))


def test_clinc150_support_pool_leaves_out_train_texts_that_are_also_queries():
    raw = clinc_json()
    train = {t for t, _ in raw["train"]}
    queries = {t for part in ("val", "test") for t, _ in raw[part]}
    assert train & queries  # the data has such duplicates, so this test can fail
    fam = family("clinc150_full")
    assert fam.excluded == len(train & queries) and sum(fam.pool_sizes().values()) == 15000 - fam.excluded
    drawn = set()
    for seed in range(20):
        drawn |= set(fam.sample("test", np.random.default_rng(seed)).support["text"])
    assert not drawn & queries


def test_clinc150_val_queries_are_the_official_val_split():
    fam = family("clinc150_full")
    task = fam.sample("val", np.random.default_rng(0))
    assert pairs(task.query, task) == [tuple(r) for r in clinc_json()["val"]]
    assert task.meta["query_source"] == "official val split"


def test_hwu64_test_task_is_64_way_with_the_whole_fold1_test_split():
    fam = family("hwu64_full")
    task = fam.sample("test", np.random.default_rng(0))
    test, train = hwu_rows("testset/csv"), hwu_rows("trainset")
    assert len(test) == 1076 and len(train) == 9960
    assert task.n_way == 64 and len(task.support["text"]) == 64 * 5
    assert pairs(task.query, task) == test
    assert set(pairs(task.support, task)) <= set(train)
    assert torch.bincount(task.support["label"], minlength=64).tolist() == [5] * 64


def test_hwu64_val_queries_are_held_out_of_every_support_pool():
    fam = family("hwu64_full")
    val = fam.sample("val", np.random.default_rng(0))
    train = set(hwu_rows("trainset"))
    assert set(pairs(val.query, val)) <= train and len(val.query["text"]) == fam.query_count("val")
    assert set(torch.unique(val.query["label"]).tolist()) == set(range(64))  # every intent has val queries
    held = set(val.query["text"])
    pool = {fam._texts[i] for p in fam._pools.values() for i in p}
    assert not held & pool
    for seed in range(10):
        for split in ("val", "test"):
            assert not held & set(fam.sample(split, np.random.default_rng(seed)).support["text"])
    assert fam.max_k_shot == min(fam.pool_sizes().values()) < 35  # the hold-out shrank the smallest pool
    assert load("hwu64_full", seed=1).sample("val", np.random.default_rng(0)).query["text"] != val.query["text"]


def test_same_seed_same_task_other_seeds_other_supports():
    fam = family("clinc150_full")
    a, b = (fam.sample("test", np.random.default_rng(3)) for _ in range(2))
    assert a.task_id == b.task_id and a.support["text"] == b.support["text"]
    assert torch.equal(a.support["label"], b.support["label"])
    others = [fam.sample("test", np.random.default_rng(s)) for s in (4, 5)]
    assert all(set(o.support["text"]) != set(a.support["text"]) for o in others)
    assert all(o.task_id != a.task_id for o in others)
    assert all(o.query["text"] == a.query["text"] and torch.equal(o.query["label"], a.query["label"]) for o in others)


def test_k_shot_override_through_load():
    fam = family("clinc150_full", k_shot=10)
    task = fam.sample("test", np.random.default_rng(0))
    assert torch.bincount(task.support["label"]).tolist() == [10] * 150 and task.meta["k_shot"] == 10
    assert "10-shot" in task.task_id


def test_class_names_add_one_name_row_per_class():
    fam = load("hwu64_full", class_names=True)
    task = fam.sample("test", np.random.default_rng(0))
    rows = task.meta["name_rows"]
    assert len(task.support["text"]) == 64 * 6 and len(rows) == 64
    assert sorted(task.support["text"][r] for r in rows) == sorted(n.replace("_", " ") for n in task.label_names)
    assert all(task.meta["support_rows"][r] == -1 for r in rows)


@pytest.mark.parametrize("overrides, match", [
    ({"k_shot": 100}, r"k_shot=100 is larger than the support pool.*use k_shot <= 99"),
    ({"k_shot": 0}, r"k_shot=0 is invalid; give a positive int"),
    ({"k_shot": (5, 10)}, r"k_shot=\(5, 10\) is invalid"),
    ({"val_fraction": 0.1}, r"official val split, so val_fraction=0.1 would not be used; leave val_fraction unset"),
])
def test_bad_settings_are_refused_when_the_family_is_built(overrides, match):
    with pytest.raises(ValueError, match=match):
        load("clinc150_full", **overrides)


def test_bad_hwu64_settings_name_the_fix():
    with pytest.raises(ValueError, match=r"k_shot=32 is larger.*use k_shot <= 31"):
        load("hwu64_full", k_shot=32)
    with pytest.raises(ValueError, match=r"val_fraction=1.5 is invalid; give a fraction between 0 and 1"):
        load("hwu64_full", val_fraction=1.5)
    no_val = load("hwu64_full", val_fraction=None)
    assert no_val.max_k_shot == 35 and no_val.classes("val") == [] and len(no_val.classes("test")) == 64
    with pytest.raises(ValueError, match=r"no validation pool.*set val_fraction"):
        no_val.sample("val", np.random.default_rng(0))


def test_splits_train_and_unknown_are_refused():
    fam = family("hwu64_full")
    assert fam.classes("train") == [] and fam.classes("val") == fam.classes("test") == sorted(fam.pool_sizes())
    with pytest.raises(ValueError, match=r"no 'train' split.*held-out target; meta-train on other families"):
        fam.sample("train", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"split 'dev' is unknown; use one of"):
        fam.sample("dev", np.random.default_rng(0))


def test_data_must_carry_official_train_and_test_rows():
    rows = [{"text": f"t{i}", "label": "a", "official_split": "train"} for i in range(3)]
    with pytest.raises(ValueError, match=r"no official 'test' rows"):
        FullLabel(rows, k_shot=1)
    with pytest.raises(ValueError, match=r"holds \['oos_test'\].*leave CLINC150's oos_\* parts out"):
        FullLabel(rows + [{"text": "x", "label": "oos", "official_split": "oos_test"}], k_shot=1)
    with pytest.raises(ValueError, match=r"column 'official_split' is missing"):
        FullLabel([{"text": "x", "label": "a"}], k_shot=1)
    with pytest.raises(ValueError, match=r"test classes \['b'\] have no train rows"):
        FullLabel(rows + [{"text": "y", "label": "b", "official_split": "test"}], k_shot=1)


def test_readers_emit_the_official_split_of_each_row():
    clinc = sources.read("clinc150")
    assert clinc["official_split"] == ["train"] * 15000 + ["val"] * 3000 + ["test"] * 4500
    hwu = sources.read("hwu64")
    assert hwu["official_split"] == ["train"] * 9960 + ["test"] * 1076


def _digest(task: Task) -> str:
    h = hashlib.sha256()
    for part in (task.support, task.query):
        h.update("\x1f".join(part["text"]).encode())
        h.update(str(part["label"].tolist()).encode())
    h.update("|".join(task.label_names).encode())
    return h.hexdigest()[:16]


# Episodes of the N-way K-shot specs, recorded before the readers gained the official_split column.
PINNED = {
    "clinc150": ["97b95f14c1960d90", "95c04c67a3825700", "a173f23cd5ea8cc8"],
    "hwu64": ["e1a86fb5ed6c5295", "c2d4b9f87324048e", "6424e7e0fb5de394"],
    "clinc150_domains": ["0e348ed3cce8faef", "a3aaa3813da5c8e2", "8fe87add3ca184d7"],
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_existing_nway_episodes_are_unchanged(name):
    fam = load(name)
    assert isinstance(fam, NWayKShot)
    rng = np.random.default_rng(0)
    assert [_digest(fam.sample(split, rng)) for split in ("train", "val", "test")] == PINNED[name]
