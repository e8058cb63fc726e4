"""Every built-in spec loads from the real data and samples valid, deterministic, disjoint tasks."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn.tasks import KINDS, SPLITS, Task, TaskFamily, available, check_family, data_dir, load

REQUIRED = ["clinc150", "dialogsum", "fewrel", "huffpost", "hwu64", "instruction_induction", "sinusoid", "text_rules"]


@functools.lru_cache(maxsize=None)
def family(name: str):
    return load(name)


def units(fam, split: str) -> set[str]:
    """The classes / tasks / rule instances of a meta-split."""
    for attr in ("classes", "tasks", "rules"):
        if hasattr(fam, attr):
            return set(getattr(fam, attr)(split))
    raise AssertionError(f"{fam!r} exposes none of classes/tasks/rules")


def assert_valid(task: Task, fam) -> None:
    assert isinstance(task, Task) and task.kind == fam.kind and task.kind in KINDS
    for part in (task.support, task.query):
        if task.kind == "regression":
            assert part["x"].dtype == torch.float32 and part["x"].ndim == 2 and part["y"].shape == part["x"].shape
        elif task.kind == "classification":
            labels = part["label"]
            assert labels.dtype == torch.long and all(isinstance(t, str) and t for t in part["text"])
            assert 0 <= int(labels.min()) and int(labels.max()) < len(task.label_names)
        else:
            assert all(isinstance(p, str) and p for p in part["prompt"])
            assert all(isinstance(c, str) and c.strip() for c in part["completion"])
    if task.kind == "classification":
        assert set(task.support["label"].tolist()) == set(range(len(task.label_names)))


def same(a: Task, b: Task) -> bool:
    if a.task_id != b.task_id or a.template != b.template or a.label_names != b.label_names:
        return False
    for part_a, part_b in ((a.support, b.support), (a.query, b.query)):
        for col in part_a:
            x, y = part_a[col], part_b[col]
            if isinstance(x, torch.Tensor):
                if not torch.equal(x, y):
                    return False
            elif list(x) != list(y):
                return False
    return True


def test_data_dir_resolves_to_the_shared_data():
    root = data_dir()  # raises FileNotFoundError (the test fails) when the data is missing
    assert (Path(root) / "clinc150" / "data" / "data_full.json").is_file()


def test_required_specs_are_built_in():
    assert set(REQUIRED) <= set(available())


@pytest.mark.parametrize("name", sorted(set(REQUIRED) | {"clinc150_domains", "clinc150_verbalizer", "few_shot_text"}))
def test_builtin_samples_valid_tasks_in_every_split(name):
    fam = family(name)
    check_family(fam)
    assert isinstance(fam, TaskFamily)
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for _ in range(3):
            task = fam.sample(split, rng)
            assert_valid(task, fam)
            assert task.meta["split"] == split


@pytest.mark.parametrize("name", REQUIRED)
def test_builtin_is_deterministic_given_the_rng(name):
    fam = family(name)
    for split in SPLITS:
        a = [fam.sample(split, np.random.default_rng(7)) for _ in range(2)]
        assert same(a[0], a[1])
        others = [fam.sample(split, np.random.default_rng(s)) for s in (1, 2, 3)]
        assert not all(same(a[0], o) for o in others)


@pytest.mark.parametrize("name", ["clinc150", "hwu64", "fewrel", "huffpost", "instruction_induction", "text_rules"])
def test_meta_splits_are_disjoint_and_episodes_stay_in_their_split(name):
    fam = family(name)
    parts = {s: units(fam, s) for s in SPLITS}
    assert all(parts.values())
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    rng = np.random.default_rng(3)
    for split in SPLITS:
        for _ in range(5):
            task = fam.sample(split, rng)
            used = set(task.label_names) if task.kind == "classification" else {task.meta.get("task", task.meta.get("rule_id"))}
            assert used <= parts[split]


def test_split_assignment_is_fixed_by_the_seed():
    a, b, c = load("hwu64", seed=0), load("hwu64", seed=0), load("hwu64", seed=1)
    assert a.classes("test") == b.classes("test")
    assert a.classes("test") != c.classes("test")
    r0, r1 = load("text_rules", seed=0), load("text_rules", seed=1)
    assert r0.rules("test") == load("text_rules", seed=0).rules("test") and r0.rules("test") != r1.rules("test")
