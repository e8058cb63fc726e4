"""Instruction families: templates, human instructions, task- and example-disjoint meta-splits."""
from __future__ import annotations

import functools

import numpy as np

from metalearn.tasks import SPLITS, InstructionFamily, data_dir, load
from metalearn.tasks.sources import instruction_annotations, read


@functools.lru_cache(maxsize=None)
def ii():
    return load("instruction_induction")


def words(n: int) -> list[str]:
    return [f"word{i}" for i in range(n)]


def upper_family(**kw) -> InstructionFamily:
    tasks = {name: {"input": words(12), "output": [fn(w) for w in words(12)]}
             for name, fn in {"upper": str.upper, "reverse": lambda w: w[::-1], "double": lambda w: w + w,
                              "first": lambda w: w[0], "last": lambda w: w[-1]}.items()}
    return InstructionFamily(tasks, **{"k_shot": 2, "q_query": 3, "splits": (0.6, 0.2, 0.2), "name": "toy", **kw})


def test_prompts_follow_the_episode_template_and_completions_the_task():
    fam = upper_family()
    expected = {"upper": str.upper, "reverse": lambda w: w[::-1], "double": lambda w: w + w,
                "first": lambda w: w[0], "last": lambda w: w[-1]}
    rng = np.random.default_rng(0)
    templates_seen = set()
    for split in SPLITS:
        for _ in range(10):
            task = fam.sample(split, rng)
            assert task.kind == "generation" and task.template in fam.templates(task.meta["task"])
            templates_seen.add(task.template)
            prefix, suffix = task.template.split("{input}")
            for part in (task.support, task.query):
                for prompt, completion in zip(part["prompt"], part["completion"]):
                    assert prompt.startswith(prefix) and prompt.endswith(suffix)
                    given = prompt[len(prefix):len(prompt) - len(suffix)]
                    assert completion == " " + expected[task.meta["task"]](given)
            assert len(task.support["prompt"]) == 2 and len(task.query["prompt"]) == 3
    assert len(templates_seen) == 3


def test_instruction_induction_tasks_are_disjoint_and_use_human_instructions():
    fam = ii()
    parts = {s: set(fam.tasks(s)) for s in SPLITS}
    assert sum(map(len, parts.values())) == 24
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    notes = instruction_annotations(data_dir())
    templates = fam.templates("antonyms")
    assert templates[:3] == ["Input: {input}\nOutput:", "{input} ->", "Q: {input}\nA:"]
    assert len(templates) == 3 + len(notes["antonyms"])
    assert any(templates[3].startswith(n) for n in notes["antonyms"])


def test_instruction_induction_pairs_come_from_the_data():
    fam = ii()
    raw = read("instruction_induction")
    rng = np.random.default_rng(4)
    for split in SPLITS:
        task = fam.sample(split, rng)
        table = raw[task.meta["task"]]
        pairs = set(zip(table["input"], table["output"]))
        prefix, suffix = task.template.split("{input}")
        for prompt, completion in zip(task.query["prompt"], task.query["completion"]):
            assert (prompt[len(prefix):len(prompt) - len(suffix)], completion[1:]) in pairs


def test_special_instruction_induction_tasks_are_normalised():
    raw = read("instruction_induction", tasks=["cause_and_effect", "common_concept"])
    cause = raw["cause_and_effect"][0]
    assert cause["input"].startswith("Sentence 1: ") and cause["output"] in cause["input"]
    assert raw["common_concept"][0]["output"] == "involve oscillations."


def test_dialogsum_splits_are_disjoint_by_dialogue():
    fam = load("dialogsum", k_shot=2, q_query=3)
    rng = np.random.default_rng(0)
    seen = {s: set() for s in SPLITS}
    for split in SPLITS:
        for _ in range(30):
            task = fam.sample(split, rng)
            seen[split] |= set(task.support["prompt"] + task.query["prompt"])
            assert "#Person1#" in task.query["prompt"][0] and task.query["completion"][0].startswith(" ")
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]


def test_from_table_and_explicit_task_lists():
    rows = [{"task": t, "q": f"{t}-{i}", "a": str(i)} for t in ("a", "b", "c", "d") for i in range(6)]
    fam = InstructionFamily.from_table(rows, "task", templates=["{q}:"], completion="{a}", k_shot=(1, 3),
                                       q_query=2, splits={"train": ["a", "b"], "val": ["c"], "test": ["d"]})
    assert fam.tasks("train") == ["a", "b"] and fam.tasks("test") == ["d"]
    shots = set()
    for _ in range(20):
        task = fam.sample("test", np.random.default_rng(_))
        shots.add(task.meta["k_shot"])
        assert all(p.startswith("d-") for p in task.support["prompt"])
        assert all(p == f"d-{c}:" for p, c in zip(task.query["prompt"], task.query["completion"]))
    assert shots == {1, 2, 3}
