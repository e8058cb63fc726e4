"""Declarative specs: user YAML files over local csv/jsonl/tsv data, overrides, the shipped specs."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from metalearn.tasks import SPLITS, InstructionFamily, NWayKShot, Sinusoid, TextRules, available, check_family, load
from metalearn.tasks.specs import load_spec

REPO = Path(__file__).resolve().parents[1]


def write_csv(path: Path, delimiter: str = ",") -> None:
    lines = [delimiter.join(["sentence", "topic"])]
    lines += [delimiter.join([f"text {t} number {i}", t]) for t in "abcdefgh" for i in range(6)]
    path.write_text("\n".join(lines) + "\n")


def test_yaml_spec_over_a_local_csv(tmp_path):
    write_csv(tmp_path / "data.csv")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({
        "family": "classification", "source": {"files": "data.csv"},
        "columns": {"text": "sentence", "label": "topic"},
        "n_way": 2, "k_shot": 2, "q_query": 3, "splits": [0.5, 0.25, 0.25], "seed": 3}))
    fam = load(tmp_path / "mine.yaml")
    assert isinstance(fam, NWayKShot) and fam.name == "mine" and fam.q_query == 3
    assert sorted(sum((fam.classes(s) for s in SPLITS), [])) == list("abcdefgh")
    task = fam.sample("val", np.random.default_rng(0))
    for text, label in zip(task.query["text"], task.query["label"].tolist()):
        assert text.split()[1] == task.label_names[label]
    assert load(str(tmp_path / "mine.yaml")).classes("test") == fam.classes("test")


def test_yaml_spec_over_a_tsv_and_overrides(tmp_path):
    write_csv(tmp_path / "data.tsv", delimiter="\t")
    spec = {"family": "verbalizer", "source": {"files": str(tmp_path / "data.tsv")},
            "columns": {"text": "sentence", "label": "topic"}, "n_way": 2, "k_shot": 1, "q_query": 1,
            "splits": {"train": ["a", "b", "c", "d"], "val": ["e", "f"], "test": ["g", "h"]},
            "templates": ["{text} is about"], "verbalizer": {t: t.upper() for t in "abcdefgh"}}
    (tmp_path / "verb.yml").write_text(yaml.safe_dump(spec))
    fam = load(tmp_path / "verb.yml", n_way=(1, 2), k_shot=(1, 2))
    assert fam.n_way == (1, 2) and fam.k_shot == (1, 2)
    task = fam.sample("train", np.random.default_rng(0))
    assert set(task.label_names) <= set("ABCD") and task.support["prompt"][0].endswith(" is about")


def test_yaml_instruction_spec_over_jsonl_with_a_task_column(tmp_path):
    rows = [{"task": t, "input": f"{t}{i}", "output": f"{i}"} for t in ("p", "q", "r", "s", "u") for i in range(8)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "inst.yaml").write_text(yaml.safe_dump({
        "family": "instruction", "source": {"files": ["rows.jsonl"], "format": "jsonl"}, "task_column": "task",
        "templates": ["Input: {input}\nOutput:", "{input} ->"], "k_shot": 2, "q_query": 2,
        "splits": [0.6, 0.2, 0.2]}))
    fam = load(tmp_path / "inst.yaml")
    assert isinstance(fam, InstructionFamily) and sum(len(fam.tasks(s)) for s in SPLITS) == 5
    task = fam.sample("test", np.random.default_rng(1))
    assert all(p.startswith("Input: " + task.meta["task"]) or p.startswith(task.meta["task"])
               for p in task.query["prompt"])


def test_data_dir_override_and_relative_files(tmp_path):
    write_csv(tmp_path / "data.csv")
    spec = tmp_path / "sub" / "rel.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({"family": "classification", "source": {"files": "data.csv"},
                                    "columns": {"text": "sentence", "label": "topic"}, "n_way": 2}))
    with pytest.raises(FileNotFoundError, match="METALEARN_DATA_DIR"):
        load(spec, data_dir=str(tmp_path / "nowhere"))
    assert isinstance(load(spec, data_dir=str(tmp_path)), NWayKShot)


def test_overrides_reach_the_builtin_families():
    assert load("clinc150", n_way=7, k_shot=3).n_way == 7
    assert isinstance(load("sinusoid", k_shot=3), Sinusoid)
    rules = load("text_rules", rules=["reverse", "caesar"], alphabet_size=5)
    assert isinstance(rules, TextRules) and rules.alphabet == "abcde"


def test_every_shipped_spec_is_documented_and_has_a_family():
    for name in available():
        spec, base = load_spec(name)
        assert base is None and spec["family"] and spec["description"]
        assert (REPO / "tasks" / f"{name}.yaml").is_file()


def test_custom_family_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["custom_family.py"])
    runpy.run_path(str(REPO / "examples" / "custom_family.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "LinearRegression" in out and "support x" in out


def test_custom_family_protocol_check():
    class NoSample:
        kind = "regression"

    with pytest.raises(TypeError, match="sample"):
        check_family(NoSample())


def test_hub_sources_go_through_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(80)], "intent": [i % 8 for i in range(80)]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump({
        "family": "classification", "source": {"hub": "clinc_oos", "name": "plus", "split": "validation"},
        "columns": {"text": "text", "label": "intent"}, "n_way": 2, "splits": [0.5, 0.25, 0.25]}))
    fam = load(tmp_path / "hub.yaml")
    assert calls == [("clinc_oos", "plus", "validation")]
    assert len(fam.sample("train", np.random.default_rng(0)).label_names) == 2


def test_data_dir_walks_up_from_the_package_when_unset(tmp_path, monkeypatch):
    from metalearn.tasks import data_dir

    monkeypatch.delenv("METALEARN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = data_dir()  # found above metalearn/tasks: <repo>/../shared/data
    assert (root / "hwu64").is_dir() and root.parts[-2:] == ("shared", "data")
    monkeypatch.setenv("METALEARN_DATA_DIR", str(root))
    assert data_dir() == root
