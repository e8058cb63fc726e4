"""Bad input fails when the family is built, with a message that names the problem and the fix."""
from __future__ import annotations

import pytest

from metalearn.tasks import InstructionFamily, NWayKShot, TextRules, Verbalized, load
from metalearn.tasks.sources import load_files


def toy(n_classes: int = 6, per_class: int = 10) -> dict:
    return {"text": [f"c{c} ex{i}" for c in range(n_classes) for i in range(per_class)],
            "label": [f"c{c}" for c in range(n_classes) for _ in range(per_class)]}


def test_k_plus_q_larger_than_a_class_names_the_data_set_and_class():
    data = toy()
    data["text"] += ["tiny 1", "tiny 2"]
    data["label"] += ["tiny", "tiny"]
    with pytest.raises(ValueError, match=r"data set 'toy': class 'tiny' has 2 examples .* needs 4"):
        NWayKShot(data, n_way=2, k_shot=1, q_query=3, splits=(0.5, 0.25, 0.25), name="toy")


def test_k_plus_q_larger_than_a_real_class():
    with pytest.raises(ValueError, match=r"'hwu64': class 'iot_hue_lighton' has 38 examples .*lower k_shot"):
        load("hwu64", k_shot=30, q_query=10)


def test_n_larger_than_the_classes_of_a_split_names_the_split_and_count():
    with pytest.raises(ValueError, match=r"'fewrel': split 'val' has 3 classes but n_way is up to 5"):
        load("fewrel", n_way=5)
    with pytest.raises(ValueError, match=r"no group in split 'train' has 16 classes .* 'travel': 15"):
        load("clinc150_domains", n_way=(2, 16))


def test_missing_column_is_named_with_the_available_ones():
    with pytest.raises(ValueError, match=r"column 'sentence' is missing; available columns are \['text', 'label'\]"):
        NWayKShot(toy(), text_column="sentence", name="toy")


def test_empty_file_is_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        load_files(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match=r"header\.csv hold no rows"):
        load_files(str(header_only))
    spec = tmp_path / "spec.yaml"
    spec.write_text("")
    with pytest.raises(ValueError, match=r"spec\.yaml is empty"):
        load(spec)


def test_template_naming_a_missing_field():
    tasks = {"t": {"input": ["a"] * 8, "output": ["b"] * 8}}
    with pytest.raises(ValueError, match=r"template 'Q: \{question\}' names field 'question', which task 't' does not"):
        InstructionFamily(tasks, templates=["Q: {question}"], splits={"train": ["t"], "val": ["t"], "test": ["t"]})
    with pytest.raises(ValueError, match=r"completion template ' \{answer\}' names field 'answer'"):
        InstructionFamily(tasks, completion=" {answer}")
    base = NWayKShot(toy(), n_way=2, k_shot=1, q_query=1, splits=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match=r"template '\{input\} =>' names field 'input'"):
        Verbalized(base, templates=["{input} =>"])


def test_overlapping_meta_splits_name_the_overlap():
    with pytest.raises(ValueError, match=r"overlap: classes \['c1'\] are in both 'train' and 'test'; put each class in one split"):
        NWayKShot(toy(), n_way=1, k_shot=1, q_query=1,
                  splits={"train": ["c0", "c1"], "val": ["c2"], "test": ["c1", "c3"]})
    tasks = {t: {"input": ["x"] * 4, "output": ["y"] * 4} for t in "abc"}
    with pytest.raises(ValueError, match=r"overlap: tasks \['a'\] are in both 'train' and 'val'"):
        InstructionFamily(tasks, k_shot=1, q_query=1, splits={"train": ["a"], "val": ["a", "b"], "test": ["c"]})


def test_other_bad_settings():
    with pytest.raises(ValueError, match=r"sum to 1\.1"):
        NWayKShot(toy(), splits=(0.6, 0.3, 0.2))
    with pytest.raises(ValueError, match=r"n_way=\(5, 2\) is invalid"):
        NWayKShot(toy(), n_way=(5, 2))
    with pytest.raises(ValueError, match=r"split 'val' has no rule instances"):
        TextRules(rules=["reverse"])
    with pytest.raises(ValueError, match=r"no task spec named 'nope'; built-ins are \["):
        load("nope")
    with pytest.raises(ValueError, match=r"key 'n_ways' is unknown for family 'classification'"):
        load("hwu64", n_ways=3)
    with pytest.raises(ValueError, match=r"split 'val' has no tasks; change the split"):
        InstructionFamily({"a": {"input": ["x"] * 4, "output": ["y"] * 4}}, k_shot=1, q_query=1)


def test_missing_data_says_how_to_set_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("METALEARN_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"clinc150.*METALEARN_DATA_DIR"):
        load("clinc150")
    monkeypatch.setenv("METALEARN_DATA_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=r"METALEARN_DATA_DIR=.*absent.* is not a folder"):
        load("hwu64")
    with pytest.raises(FileNotFoundError, match=r"spec file .*missing\.yaml does not exist"):
        load(tmp_path / "missing.yaml")
