"""The leave-one-data-set-out experiment: --quick end to end on the real encoder and data; rows and bad input."""
import argparse
import json
import os

import numpy as np
import pytest

from experiments import common, leave_one_out
from experiments.loo_report import across, cell_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example():
    return leave_one_out


def test_leave_one_out_quick(tmp_path):
    out = tmp_path / "loo"
    example().main(["--quick", "--quiet", "--output-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for r in summary["rows"] if not r.get("paired")]
    assert {r["cell"] for r in rows} == {"huffpost 5w1s", "huffpost 5w2s"}
    methods = {r["method"] for r in rows}
    assert {"protomaml", "protonet", "finetune", "random_init", "prototypes", "linear_probe",
            "protomaml+guard"} == methods
    assert all(0.0 <= r["mean"] <= 1.0 for r in rows)
    paired = [r for r in summary["rows"] if r.get("paired")]
    assert {r["reference"] for r in paired} == {"prototypes", "protonet (0 steps)", "protonet (1 steps)"}
    assert summary["guard"]["huffpost 5w2s"]["kind"].startswith("per task (support folds), behind a verdict")  # K = 2
    assert summary["guard"]["huffpost 5w2s"]["verdict"] in ("meta", "foundation", "per task")
    assert summary["guard"]["huffpost 5w1s"]["kind"].startswith("per target")
    table = (out / "summary.md").read_text()
    assert "| protomaml+guard (1 step) |" in table and "| ProtoMAML − protonet (0 steps) |" in table
    assert "wall time" in table
    lines = [line for line in table.splitlines() if line.startswith("| huffpost ")]
    assert [line.split(" | ")[0] for line in lines] == ["| huffpost 5w2s", "| huffpost 5w1s"] * 2  # two tables
    assert (out / "loo_heatmap.png").stat().st_size > 1000
    saved = json.loads((out / "huffpost_loo" / "huffpost_5way_2shot" / "results.json").read_text())
    assert {r["method"] for r in saved["records"]} >= {"protomaml+guard", "finetune"}

    # two runs' cells compared episode by episode (loo_report.across); here a run against an edited copy of itself
    cell = out / "huffpost_loo" / "huffpost_5way_2shot"
    same = across(str(cell), str(cell))
    assert {r["method"] for r in same} >= {"protomaml", "protonet", "prototypes", "protomaml+guard"}
    assert all(r["mean_diff"] == 0.0 and r["n"] == 3 for r in same)
    edited = tmp_path / "edited"
    edited.mkdir()
    first = next(r for r in saved["records"] if r["method"] == "protonet" and r["steps"] == 1)
    first["accuracy"] += 0.3
    (edited / "results.json").write_text(json.dumps(saved))
    moved = {(r["method"], r["steps"]): r["mean_diff"] for r in across(str(edited), str(cell))}
    assert moved.pop(("protonet", 1)) == pytest.approx(0.1) and set(moved.values()) == {0.0}
    first["task_id"] = "another episode"
    (edited / "results.json").write_text(json.dumps(saved))
    with pytest.raises(RuntimeError, match=f"episode {first['episode']} differs"):
        across(str(edited), str(cell))


def test_rows_sources_and_targets():
    loo = example()
    rows = loo.parse_rows("hwu64,fewrel=clinc150+huffpost", "clinc150", list(loo.DATASETS))
    assert [(r.target, r.sources, r.in_domain) for r in rows] == [
        ("hwu64", ["clinc150", "fewrel", "huffpost"], False), ("fewrel", ["clinc150", "huffpost"], False),
        ("clinc150", ["clinc150", "hwu64", "fewrel", "huffpost"], True)]
    with pytest.raises(ValueError, match="target 'hwu64' is also a source"):
        loo.parse_rows("hwu64=hwu64+clinc150", "", list(loo.DATASETS))
    with pytest.raises(ValueError, match="target 'hwu64' is also a source"):  # refused before any work or file
        loo.main(["--targets", "hwu64=clinc150+hwu64", "--output-dir", os.path.join(ROOT, "runs", "never")])
    with pytest.raises(SystemExit, match="--in-domain-weight -1.0 is invalid"):
        loo.main(["--in-domain-weight", "-1", "--output-dir", os.path.join(ROOT, "runs", "never")])
    with pytest.raises(SystemExit, match="--lora-r 0 is invalid"):
        loo.main(["--lora-r", "0", "--output-dir", os.path.join(ROOT, "runs", "never")])
    with pytest.raises(SystemExit, match="--lora-targets: LoRA target module 'querry' does not exist"):
        loo.main(["--lora-targets", "query", "querry", "--output-dir", os.path.join(ROOT, "runs", "never")])
    with pytest.raises(SystemExit, match="'pooler' is a BertPooler, not a layer LoRA can adapt"):
        loo.main(["--lora-targets", "pooler", "--output-dir", os.path.join(ROOT, "runs", "never")])
    assert not os.path.exists(os.path.join(ROOT, "runs", "never"))
    args = type("Args", (), {"train_queries": 5, "train_ways": 10, "train_shots": (1, 5), "class_names": "none",
                             "in_domain_weight": 1.0})()
    in_domain = loo.sources_for(rows[2], args)
    assert list(in_domain.weights.values()) == pytest.approx([0.25] * 4)
    args.in_domain_weight = 3.0  # the in-domain row's own data set: half the episodes against three others
    assert list(loo.sources_for(rows[2], args).weights.values()) == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert list(loo.sources_for(rows[0], args).weights.values()) == pytest.approx([1 / 3] * 3)  # held out: no own data
    args.in_domain_weight = 1.0
    assert not any(f.class_names for f in in_domain.sources.values())
    args.class_names = "test"  # names in the test episodes only: meta-training as without
    assert not any(f.class_names for f in loo.sources_for(rows[2], args).sources.values())
    args.class_names = "all"  # names where a data set has readable ones; HuffPost's classes are numbers
    named = loo.sources_for(rows[2], args).sources
    assert {n: bool(f.class_names) for n, f in named.items()} == {
        "clinc150": True, "hwu64": True, "fewrel": True, "huffpost": False}
    assert loo.target_for(rows[2], 15, 1, class_names=True).sample("test", np.random.default_rng(0)).meta["class_names"]
    clinc = common.target_spec("clinc150")
    assert set(in_domain.sources["clinc150"].classes("train")) == set(clinc.classes("train"))  # train intents only
    assert len(in_domain.sources["fewrel"].classes("train")) == 16  # a source data set gives all its classes
    target = loo.target_for(rows[2], 15, 1)
    assert target.classes("test") == clinc.classes("test") and target.classes("val") == clinc.classes("val")
    held_out = loo.target_for(rows[0], 15, 1)  # HWU64 left out: every non-test intent can validate
    hwu = common.target_spec("hwu64")
    assert set(held_out.classes("val")) == set(hwu.classes("train") + hwu.classes("val"))
    assert not held_out.classes("train")
    assert loo.target_for(rows[1], 15, 1) is None  # FewRel has 5 test relations: no 15-way cell


def test_lora_rank_and_layers_reach_the_learners():
    loo = example()
    args = argparse.Namespace(
        train_queries=5, train_ways=5, train_shots=(1, 2), class_names="none", in_domain_weight=1.0, prompt_tokens=0,
        compute_dtype="auto", inner_lr=0.5, support_temperature=0.2, seed=0, lora_r=4,
        lora_targets=["query", "key", "value", "output.dense", "intermediate.dense"])
    row = loo.parse_rows("", "huffpost", list(loo.DATASETS))[0]
    learner = loo.metalearn.fit(loo.sources_for(row, args), method="protonet", meta_steps=0, progress=False,
                                **loo.adapter_settings(args))
    shapes = {n: tuple(p.shape) for n, p in learner.meta_parameters().items() if "lora_A" in n}
    layers = {n.split(".lora_A")[0].split("layer.", 1)[1] for n in shapes}  # e.g. "0.attention.self.key"
    assert {name.split(".", 1)[1] for name in layers} == {
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense"}  # every projection of every block; never the pooler
    assert len(layers) == 6 * 6 and {s[0] for s in shapes.values()} == {4}


def test_resume_runs_only_the_missing_cells_and_refuses_other_settings(tmp_path, monkeypatch):
    loo = example()
    out = tmp_path / "loo"
    loo.main(["--quick", "--quiet", "--output-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    kept = [r for r in summary["rows"] if r["cell"] == "huffpost 5w1s"]
    summary["rows"] = kept  # as if the run had stopped after its first cell
    del summary["guard"]["huffpost 5w2s"]
    del summary["args"]["class_names"]  # a run from before --class-names existed resumes as one without names
    del summary["args"]["lora_r"], summary["args"]["lora_targets"]  # ... and from before --lora-*: r=8 on query/value
    (out / "summary.json").write_text(json.dumps(summary))
    calls = []
    real = loo.evaluate_cell
    monkeypatch.setattr(loo, "evaluate_cell", lambda row, learners, family, n, k, *a: calls.append((n, k)) or real(
        row, learners, family, n, k, *a))
    loo.main(["--quick", "--quiet", "--resume", "--output-dir", str(out)])
    assert calls == [(5, 2)]
    resumed = json.loads((out / "summary.json").read_text())
    assert [r for r in resumed["rows"] if r["cell"] == "huffpost 5w1s"] == kept  # the earlier cell, untouched
    assert {r["cell"] for r in resumed["rows"]} == {"huffpost 5w1s", "huffpost 5w2s"}
    assert len(resumed["runs"]) == 2 and resumed["minutes"] == pytest.approx(sum(r["minutes"] for r in resumed["runs"]))
    assert (out / "summary.md").read_text().count("python -m experiments.leave_one_out --quick") == 2  # both commands
    loo.main(["--quick", "--quiet", "--resume", "--output-dir", str(out)])
    assert calls == [(5, 2)]  # nothing left to run: no cell, no training
    before = (out / "summary.json").read_text()
    with pytest.raises(SystemExit, match="seed=0 there, 1 here"):
        loo.main(["--quick", "--quiet", "--resume", "--seed", "1", "--output-dir", str(out)])
    with pytest.raises(SystemExit, match="class_names='none' there, 'all' here"):
        loo.main(["--quick", "--quiet", "--resume", "--class-names", "--output-dir", str(out)])
    with pytest.raises(SystemExit, match=r"lora_targets=\['query', 'value'\] there, \['query', 'key'\] here"):
        loo.main(["--quick", "--quiet", "--resume", "--lora-targets", "query", "key", "--output-dir", str(out)])
    assert (out / "summary.json").read_text() == before


def test_guard_only_recomputes_the_guarded_rows_from_saved_results(tmp_path, monkeypatch):
    loo = example()
    out = tmp_path / "loo"
    loo.main(["--quick", "--quiet", "--output-dir", str(out)])
    before = json.loads((out / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for r in summary["rows"]:
        if r["cell"] == "huffpost 5w2s" and r["method"] == "protomaml+guard":
            r["mean" if "mean" in r else "mean_diff"] = -9.0  # as if an older guard had computed them
    summary["guard"]["huffpost 5w2s"] = {"kind": "per task (support folds)", "adapted": 0.5}
    summary["rows"].sort(key=lambda r: r["cell"] != "huffpost 5w2s")  # the recomputed cell first in the table
    (out / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setattr(loo.metalearn, "evaluate", lambda *a, **k: pytest.fail("--guard-only re-ran an evaluation"))
    loo.main(["--guard-only", "--quiet", "--output-dir", str(out)])
    after = json.loads((out / "summary.json").read_text())
    key = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
    assert key(after["rows"]) == key(before["rows"])  # the guard's rows recomputed, everything else as it was
    cells = lambda rows: list(dict.fromkeys(r["cell"] for r in rows))  # noqa: E731
    assert cells(after["rows"]) == ["huffpost 5w2s", "huffpost 5w1s"]  # where it was in the table
    assert after["guard"] == before["guard"]


def test_cells_in_one_order_whatever_order_runs_added_them():
    added = ["fewrel 5w1s", "clinc150 (in-domain) 15w1s", "hwu64 15w1s", "fewrel 5w5s", "hwu64 5w1s", "hwu64 5w5s",
             "clinc150 (in-domain) 5w5s", "clinc150 15w1s"]
    assert cell_order(added) == ["fewrel 5w5s", "fewrel 5w1s", "hwu64 5w5s", "hwu64 5w1s", "hwu64 15w1s",
                                 "clinc150 15w1s", "clinc150 (in-domain) 5w5s", "clinc150 (in-domain) 15w1s"]


def test_full_label_cells_only_for_held_out_intent_targets():
    loo = example()
    assert common.parse_settings("5x1,allx5,ALLx10", full_label=True) == [(5, 1), (None, 5), (None, 10)]
    with pytest.raises(SystemExit, match="'allx5' is not NxK"):
        common.parse_settings("allx5")  # the other experiments have no full-label cells
    hwu, fewrel, in_domain = loo.parse_rows("hwu64,fewrel", "clinc150", list(loo.DATASETS))
    family = loo.target_for(hwu, None, 5)
    task = family.sample("test", np.random.default_rng(0))
    assert task.n_way == 64 and len(task.support["text"]) == 64 * 5 and len(task.query["text"]) == 1076
    assert loo.target_for(in_domain, None, 5) is None  # its meta-training read CLINC150's train/val/test rows
    assert loo.target_for(fewrel, None, 5) is None  # no official full-label splits
    assert loo.cell_name(hwu, None, 5) == "hwu64 allw5s"
    assert loo.cell_folder("out", hwu, None, 5) == os.path.join("out", "hwu64_allway_5shot")
    args = argparse.Namespace(episodes=600, val_episodes=50, full_seeds=5, full_val_episodes=2)
    assert loo.episodes_of(5, args) == (600, 50) and loo.episodes_of(None, args) == (5, 2)
    assert cell_order(["hwu64 allw10s", "hwu64 allw5s", "hwu64 5w1s", "hwu64 5w5s"]) == [
        "hwu64 5w5s", "hwu64 5w1s", "hwu64 allw10s", "hwu64 allw5s"]
    with pytest.raises(SystemExit, match="--full-seeds 0"):
        loo.main(["--full-seeds", "0", "--output-dir", os.path.join(ROOT, "runs", "never")])
    assert not os.path.exists(os.path.join(ROOT, "runs", "never"))
