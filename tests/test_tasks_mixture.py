"""Mixtures of families (one source per episode): weights, splits, reproducibility, specs and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from metalearn.tasks import SPLITS, Mixture, NWayKShot, Sinusoid, check_target, load, mix


def toy(name: str, n_classes: int = 9, seed: int = 0) -> NWayKShot:
    rows = {"text": [f"{name} text {c} {i}" for c in range(n_classes) for i in range(4)],
            "label": [f"{name}{c}" for c in range(n_classes) for _ in range(4)]}
    return NWayKShot(rows, n_way=2, k_shot=1, q_query=2, splits=(1 / 3, 1 / 3, 1 / 3), seed=seed, name=name)


def test_sources_are_drawn_with_the_given_weights():
    family = mix({"a": toy("a"), "b": toy("b"), "c": toy("c")}, weights=[1, 3, 0])
    assert family.weights == {"a": 0.25, "b": 0.75, "c": 0.0}
    rng = np.random.default_rng(0)
    n = 4000
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(n):
        counts[family.sample("train", rng).meta["source"]] += 1
    assert counts["c"] == 0  # a zero weight is never drawn
    sd = (n * 0.25 * 0.75) ** 0.5  # binomial standard deviation of the count of "a"
    assert abs(counts["a"] - n * 0.25) < 4 * sd and counts["a"] + counts["b"] == n
    by_name = mix({"a": toy("a"), "b": toy("b")}, weights={"b": 1.0, "a": 1.0})
    assert by_name.weights == {"a": 0.5, "b": 0.5}
    assert mix([toy("x"), toy("y")]).weights == {"x": 0.5, "y": 0.5}  # a list is named by family.name; uniform


def test_each_episode_comes_from_one_source_and_stays_in_its_split():
    sources = {"a": toy("a"), "b": toy("b")}
    family = mix(sources)
    qualified = {s: set(family.classes(s)) for s in SPLITS}
    assert not qualified["train"] & qualified["val"] and not qualified["train"] & qualified["test"]
    assert not qualified["val"] & qualified["test"]
    assert len(qualified["train"]) == 6 and {c.split("/")[0] for c in qualified["train"]} == {"a", "b"}
    rng = np.random.default_rng(1)
    seen = set()
    for split in SPLITS:
        for _ in range(40):
            task = family.sample(split, rng)
            source = task.meta["source"]
            seen.add(source)
            assert set(task.label_names) <= set(sources[source].classes(split))  # one source, its own split
            assert all(text.startswith(source + " ") for text in task.support["text"] + task.query["text"])
            assert task.task_id.startswith(f"{source}:{source}/{split}/")
    assert seen == {"a", "b"}


def test_sampling_is_reproducible_from_the_rng():
    family = mix({"a": toy("a"), "b": toy("b")}, weights=[2, 1])
    ids = lambda seed: [family.sample("train", rng).task_id for rng in [np.random.default_rng(seed)] for _ in range(30)]  # noqa: E731
    assert ids(5) == ids(5)
    assert ids(5) != ids(6)
    # the source choice and the episode come from the same rng, in that order
    rng, manual = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(10):
        task = family.sample("val", rng)
        key = ["a", "b"][int(manual.choice(2, p=[2 / 3, 1 / 3]))]
        expected = family.sources[key].sample("val", manual)
        assert task.task_id == f"{key}:{expected.task_id}" and task.query["text"] == expected.query["text"]


def test_without_drops_a_source_and_renormalizes():
    family = mix({"a": toy("a"), "b": toy("b"), "c": toy("c")}, weights=[1, 1, 2])
    rest = family.without("c")
    assert list(rest.sources) == ["a", "b"] and rest.weights == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="has no source 'z'"):
        family.without("z")
    with pytest.raises(ValueError, match="nothing would be left"):
        mix({"a": toy("a")}).without("a")


def test_a_spec_lists_other_specs(tmp_path):
    rows = [{"text": f"{t} words {i}", "topic": t} for t in "abcdefghijkl" for i in range(5)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    child = {"family": "classification", "source": {"files": "rows.jsonl", "format": "json"},
             "columns": {"text": "text", "label": "topic"}, "n_way": 2, "k_shot": 1, "q_query": 2,
             "splits": [0.5, 0.25, 0.25]}  # 6 / 3 / 3 topics
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(child))
    (tmp_path / "both.yaml").write_text(yaml.safe_dump({
        "family": "mixture", "weights": [1, 3],
        "sources": ["topics.yaml", {"spec": "topics.yaml", "name": "topics3", "n_way": 3, "seed": 1}]}))
    family = load(tmp_path / "both.yaml")
    assert isinstance(family, Mixture) and family.weights == {"topics": 0.25, "topics3": 0.75}
    assert family.sources["topics3"].n_way == 3 and family.sources["topics"].n_way == 2
    assert load(tmp_path / "both.yaml", weights=[1, 0]).weights == {"topics": 1.0, "topics3": 0.0}  # overrides
    task = family.sample("train", np.random.default_rng(0))
    assert len(task.label_names) == {"topics": 2, "topics3": 3}[task.meta["source"]]
    (tmp_path / "twice.yaml").write_text(yaml.safe_dump({"family": "mixture", "sources": ["topics.yaml", "topics.yaml"]}))
    with pytest.raises(ValueError, match="lists the source 'topics' twice"):
        load(tmp_path / "twice.yaml")
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({"family": "mixture", "sources": ["topics.yaml"], "n_way": 3}))
    with pytest.raises(ValueError, match=r"key\(s\) \['n_way'\] are unknown for family 'mixture'"):
        load(tmp_path / "extra.yaml")


def test_builtin_mixture_and_huffpost_split():
    huffpost = load("huffpost")
    assert huffpost.classes("val") == [str(c) for c in range(5)]
    assert sorted(huffpost.classes("train"), key=int) == [str(c) for c in range(5, 25)]
    assert sorted(huffpost.classes("test"), key=int) == [str(c) for c in range(25, 41)]
    family = load("few_shot_text")
    assert list(family.sources) == ["clinc150", "hwu64", "fewrel", "huffpost"]
    rng = np.random.default_rng(0)
    sources = {family.sample("test", rng).meta["source"] for _ in range(40)}
    assert sources == set(family.sources)


@pytest.mark.parametrize("weights, message", [
    ([1, -1], "must be a finite number >= 0"),
    ([0, 0], "all zero"),
    ([1, 2, 3], "3 weights for 2 sources"),
    ([1], "1 weights for 2 sources"),
    ([1, float("nan")], "must be a finite number >= 0"),
    ({"a": 1, "z": 1}, r"unknown \['z'\]; missing \['b'\]"),
    ("11", "give one number per source"),
])
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        mix({"a": toy("a"), "b": toy("b")}, weights=weights)


def test_bad_sources_are_refused():
    same = toy("a")
    with pytest.raises(ValueError, match="lists the source 'a' twice"):
        mix([same, toy("a", seed=1)])
    with pytest.raises(ValueError, match="same source twice.*as 'first' and 'second'"):
        mix({"first": same, "second": same})
    with pytest.raises(ValueError, match="mixes task kinds"):
        mix({"text": toy("a"), "waves": Sinusoid()})
    with pytest.raises(ValueError, match="at least one source"):
        mix({})
    with pytest.raises(ValueError, match="has no name"):
        mix([Sinusoid()])
    with pytest.raises(TypeError, match="not a task family"):
        mix({"a": object()})


def test_a_leave_one_out_target_that_is_a_source_is_refused():
    family = mix({"a": toy("a"), "b": toy("b")})
    with pytest.raises(ValueError, match="target 'a' is also a source"):
        check_target(family, "a")
    check_target(family.without("a"), "a")
    check_target(["b", "c"], "a")
