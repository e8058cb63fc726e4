"""N-way K-shot episodes: label remapping, group sampling, varying ways and shots, and the verbalizer."""
from __future__ import annotations

import functools
import json
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from metalearn.tasks import NWayKShot, Verbalized, data_dir, load
from metalearn.tasks.sources import read


@functools.lru_cache(maxsize=None)
def clinc_intents() -> dict[str, set[str]]:
    table = read("clinc150")
    out: dict[str, set[str]] = {}
    for text, intent in zip(table["text"], table["intent"]):
        out.setdefault(text, set()).add(intent)
    return out


@functools.lru_cache(maxsize=None)
def clinc_domain_of() -> dict[str, str]:
    domains = json.loads((data_dir() / "clinc150" / "data" / "domains.json").read_text())
    return {intent: d for d, intents in domains.items() for intent in intents}


def toy(n_classes: int = 6, per_class: int = 10) -> dict:
    return {"text": [f"c{c} ex{i}" for c in range(n_classes) for i in range(per_class)],
            "label": [f"c{c}" for c in range(n_classes) for _ in range(per_class)],
            "group": [f"g{c // 3}" for c in range(n_classes) for _ in range(per_class)]}


def test_labels_are_remapped_and_name_the_source_class_of_each_text():
    fam = load("clinc150", n_way=5, k_shot=2, q_query=3)
    intents = clinc_intents()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for _ in range(5):
            task = fam.sample(split, rng)
            assert len(task.label_names) == 5 == task.n_way
            for part, per_class in ((task.support, 2), (task.query, 3)):
                assert sorted(Counter(part["label"].tolist()).values()) == [per_class] * 5
                for text, label in zip(part["text"], part["label"].tolist()):
                    assert task.label_names[label] in intents[text]


def test_label_order_is_random_per_episode():
    fam = NWayKShot(toy(9), n_way=3, k_shot=1, q_query=1, name="toy",
                    splits={"train": ["c0", "c1", "c2"], "val": ["c3", "c4", "c5"], "test": ["c6", "c7", "c8"]})
    rng = np.random.default_rng(0)
    orders = {fam.sample("train", rng).label_names for _ in range(30)}
    assert len(orders) > 1 and all(set(o) == {"c0", "c1", "c2"} for o in orders)


def test_group_sampling_keeps_each_episode_in_one_domain():
    domain_of = clinc_domain_of()
    fam = load("clinc150_domains", n_way=(3, 8))
    for split in ("train", "val", "test"):
        domains = {domain_of[c] for c in fam.classes(split)}
        assert len(domains) == {"train": 6, "val": 2, "test": 2}[split]
        rng = np.random.default_rng(1)
        for _ in range(8):
            task = fam.sample(split, rng)
            assert len({domain_of[c] for c in task.label_names}) == 1
            assert task.meta["group"] == domain_of[task.label_names[0]]


def test_group_sampling_with_class_split_uses_groups_that_have_enough_classes():
    fam = NWayKShot(read("clinc150"), text_column="text", label_column="intent", group_by="domain",
                    n_way=3, k_shot=1, q_query=1, splits=(0.6, 0.2, 0.2), name="clinc150")
    domain_of = clinc_domain_of()
    rng = np.random.default_rng(2)
    for split in ("train", "val", "test"):
        for _ in range(5):
            assert len({domain_of[c] for c in fam.sample(split, rng).label_names}) == 1


def test_ways_and_shots_vary_per_episode_within_their_ranges():
    fam = NWayKShot(toy(20), n_way=(2, 5), k_shot=(1, 3), q_query=2, splits=(0.5, 0.25, 0.25), name="toy")
    assert fam.n_way == (2, 5) and fam.k_shot == (1, 3) and fam.q_query == 2
    seen_n, seen_k = set(), set()
    rng = np.random.default_rng(0)
    for _ in range(40):
        task = fam.sample("train", rng)
        n, k = task.meta["n_way"], task.meta["k_shot"]
        assert len(task.label_names) == n and len(task.support["text"]) == n * k and len(task.query["text"]) == n * 2
        seen_n.add(n)
        seen_k.add(k)
    assert seen_n == {2, 3, 4, 5} and seen_k == {1, 2, 3}


def test_classlabel_columns_become_class_names():
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "y": datasets.ClassLabel(names=["neg", "pos", "neu", "mix"])})
    data = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(40)], "y": [i % 4 for i in range(40)]},
                                      features=features)
    fam = NWayKShot(data, text_column="sentence", label_column="y", n_way=1, k_shot=2, q_query=2,
                    splits={"train": ["neg", "pos"], "val": ["neu"], "test": ["mix"]}, name="sst")
    task = fam.sample("train", np.random.default_rng(0))
    assert task.label_names[0] in ("neg", "pos")
    assert fam.classes("test") == ["mix"]


def test_verbalizer_completions_are_the_label_words():
    fam = load("clinc150_verbalizer")
    assert isinstance(fam, Verbalized) and fam.kind == "generation"
    intents = clinc_intents()
    rng = np.random.default_rng(0)
    for _ in range(5):
        task = fam.sample("val", rng)
        assert task.template in fam.templates
        for part in (task.support, task.query):
            for prompt, completion, label in zip(part["prompt"], part["completion"], part["label"].tolist()):
                assert completion == " " + task.label_names[label]
                line = prompt.split("\n")[0]
                texts = [line, line.removeprefix("Input: "), line.removeprefix("Utterance: ")]
                assert any(task.meta["classes"][label] in intents.get(t, ()) for t in texts)
        assert all("_" not in w for w in task.label_names)


def test_verbalizer_uses_a_custom_word_map():
    base = NWayKShot(toy(9), n_way=2, k_shot=1, q_query=1, splits=(0.34, 0.33, 0.33), name="toy")
    words = {f"c{i}": f"w{i}" for i in range(9)}
    fam = Verbalized(base, templates=["{text} =>"], verbalizer=words, completion_prefix="")
    task = fam.sample("test", np.random.default_rng(0))
    assert set(task.label_names) <= set(words.values())
    assert task.support["prompt"][0].endswith(" =>") and task.support["completion"][0] in words.values()
    assert isinstance(task.support["label"], torch.Tensor)


def test_a_target_only_data_set_may_have_no_train_classes():
    import pytest

    classes = [f"c{c}" for c in range(6)]
    fam = NWayKShot(toy(), n_way=3, k_shot=1, q_query=2, splits={"train": [], "val": classes[:3], "test": classes[3:]})
    assert fam.classes("train") == [] and set(fam.sample("test", np.random.default_rng(0)).label_names) == set(classes[3:])
    with pytest.raises(ValueError, match="has no 'train' classes to sample"):
        fam.sample("train", np.random.default_rng(0))
    with pytest.raises(ValueError, match="split 'val' has 2 classes but n_way is up to 3"):  # too small, not empty
        NWayKShot(toy(), n_way=3, k_shot=1, q_query=2, splits={"train": [], "val": classes[:2], "test": classes[2:]})


def test_class_names_add_one_readable_name_per_class_to_the_support_only():
    plain = load("clinc150", n_way=5, k_shot=2, q_query=3)
    named = load("clinc150", n_way=5, k_shot=2, q_query=3, class_names=True)
    a, b = plain.sample("test", np.random.default_rng(3)), named.sample("test", np.random.default_rng(3))
    assert b.label_names == a.label_names and b.meta["k_shot"] == 2 and b.meta["class_names"]
    assert not a.meta["class_names"]
    assert sorted(b.query["text"]) == sorted(a.query["text"])  # the same examples were drawn
    extra = Counter(b.support["text"]) - Counter(a.support["text"])
    assert len(b.support["text"]) == len(a.support["text"]) + 5 and sum(extra.values()) == 5
    for text, label in zip(b.support["text"], b.support["label"].tolist()):
        if text in extra:  # the name sits under its own class's episode label
            assert text == b.label_names[label].replace("_", " ") and "_" not in text
    assert [b.support["text"][r] for r in b.meta["name_rows"]] == sorted(extra, key=b.support["text"].index)
    assert a.meta["name_rows"] == []


def test_class_names_from_a_mapping_and_the_refusals_name_the_fix():
    data = toy()
    fam = NWayKShot(data, n_way=2, k_shot=1, q_query=2, splits={"train": ["c0", "c1", "c2", "c3", "c4", "c5"],
                    "val": [], "test": []}, class_names={f"c{c}": f"class number {c}" for c in range(6)})
    task = fam.sample("train", np.random.default_rng(0))
    names = {t: y for t, y in zip(task.support["text"], task.support["label"].tolist()) if t.startswith("class")}
    assert {t: task.label_names[y] for t, y in names.items()} == {f"class number {c[1:]}": c for c in task.label_names}
    with pytest.raises(ValueError, match=r"class_names lacks a text for class\(es\) \['c5'\]"):
        NWayKShot(data, n_way=2, splits=(0.5, 0.0, 0.5), class_names={f"c{c}": "x" for c in range(5)})
    numbered = {"text": data["text"], "label": [lab[1:] for lab in data["label"]]}
    with pytest.raises(ValueError, match="needs readable class names, but its classes are numbers"):
        NWayKShot(numbered, n_way=2, splits=(0.5, 0.0, 0.5), class_names=True)
    with pytest.raises(ValueError, match="class_names='yes' is invalid"):
        NWayKShot(data, n_way=2, splits=(0.5, 0.0, 0.5), class_names="yes")
