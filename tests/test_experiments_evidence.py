"""The evidence experiments run end to end in their --quick modes and write tables and plots that parse.

Each script is imported from the ``experiments`` package and its ``main(argv)`` called in this process (one
import of torch/transformers for all of them), writing into a tmp folder.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import re

import pytest

CELL = re.compile(r"^(-?\d+\.\d+) ± (\d+\.\d+|nan)$")


def _script(name: str):
    return importlib.import_module(f"experiments.{name}")


def _table_rows(path: str) -> dict[str, list[str]]:
    """{first cell: other cells} of every markdown table row in ``path`` (header and rule rows skipped)."""
    rows = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("| ") and not line.startswith(("| method", "| difference")) and not line.startswith("|---"):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _png(path: str) -> None:
    assert os.path.getsize(path) > 1000, path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path


def test_sinusoid_quick(tmp_path):
    out = str(tmp_path / "sinusoid")
    payload = _script("sinusoid_maml").main(["--quick", "--quiet", "--output-dir", out])
    for name in ("table.md", "results.json", "fig3.png", "eval/steps.png", "eval/shots.png", "eval/results.md"):
        assert os.path.exists(os.path.join(out, name)), name
    for name in ("fig3.png", "eval/steps.png"):
        _png(os.path.join(out, name))
    rows = _table_rows(os.path.join(out, "table.md"))
    for label in ("MAML", "first-order MAML", "Reptile", "Meta-SGD", "pretrained on all tasks (multitask)",
                  "random init"):
        cells = rows[label]
        assert len(cells) == 6, (label, cells)  # K=5 and K=10 x 1, 5, 10 steps
        for cell in cells:
            if label != "Meta-SGD":  # learned step sizes may diverge beyond the trained steps; it says so
                assert CELL.match(cell), (label, cell)
    with open(os.path.join(out, "results.json")) as f:
        mse = json.load(f)["mse"]["fixed_lr"]
    assert mse == payload["mse"]["fixed_lr"]
    # the real check: after 10 steps a MAML init is better than a random one on the same test tasks, by the
    # paired difference's 95% interval (MSE(maml) - MSE(random) < 0), for K = 5 and K = 10
    with open(os.path.join(out, "eval", "results.json")) as f:
        paired = {(r["method"], r["shots"], r["steps"]): r for r in json.load(f)["paired"] if r["metric"] == "mse"}
    for k in (5, 10):
        diff = paired[("maml", k, 10)]
        assert diff["reference"] == "random_init"
        assert diff["mean_diff"] + diff["ci95"] < 0, (k, diff, mse[f"maml/K={k}/steps=10"],
                                                      mse[f"random_init/K={k}/steps=10"])


@pytest.mark.parametrize("family", ["substitution", "text_rules", "instruction_induction", "dialogsum"])
def test_text_rules_quick(tmp_path, family, monkeypatch, base_cache):
    monkeypatch.setenv("METALEARN_CACHE", base_cache)  # the demo test pretrains the same quick base: paid once
    out = str(tmp_path / family)
    argv = ["--quick", "--quiet", "--family", family, "--output-dir", out]
    if family == "substitution":
        argv += ["--methods", "maml,multitask", "--steps", "0,10"]
    else:  # only prove the path: one method, the smallest budgets
        argv += ["--methods", "fomaml", "--pretrain-steps", "10", "--meta-steps", "2", "--episodes", "2",
                 "--steps", "0,1"]
    payload = _script("text_rules").main(argv)
    for name in ("table.md", "results.json", "steps.png", "pretrain.png", "eval/results.md"):
        assert os.path.exists(os.path.join(out, name)), name
    _png(os.path.join(out, "steps.png"))
    rows = _table_rows(os.path.join(out, "table.md"))
    methods = ["maml", "multitask"] if family == "substitution" else ["fomaml"]
    expected = methods + ["random_init", "zero_shot", "in_context"]
    diffs = (["maml − multitask", "multitask − random_init", "maml − in_context"] if family == "substitution"
             else ["fomaml − in_context"])
    assert sorted(rows) == sorted(expected + diffs)
    for name, cells in rows.items():
        for cell in cells:
            number = float(cell.split(" ± ")[0])
            assert math.isfinite(number), (name, cell)
    scores = payload["scores"]
    assert all(0.0 <= scores[f"{m}/exact_match/steps=0"][0] <= 1.0 for m in expected)
    assert all(scores[f"{m}/nll/steps=0"][0] > 0 for m in expected)
    if family == "substitution":
        # the base can apply tables it is told, not ones it is not told; after 10 steps on 8 examples the
        # meta-learned init writes new tables far better than the frozen base guesses them
        skill = payload["base_skill"]
        assert skill["test, told the table"] > 0.3 and skill["test, bare prompt"] < 0.1
        mean, ci = scores["maml/exact_match/steps=10"]
        assert mean - ci > scores["zero_shot/exact_match/steps=10"][0], scores


def test_adapter_sets_quick(tmp_path):
    out = str(tmp_path / "sets")
    payload = _script("adapter_sets").main(["--quick", "--quiet", "--output-dir", out])
    for name in ("table.md", "results.json", "eval/results.md"):
        assert os.path.exists(os.path.join(out, name)), name
    bases = os.path.join(out, "base")
    assert [d for d in os.listdir(bases) if os.path.exists(os.path.join(bases, d, "config.json"))]
    sets = ["lora", "prompt", "prefix", "lora+prompt", "lora+prefix"]
    assert len(set(payload["sizes"].values())) == 1 and sorted(payload["sizes"]) == sorted(sets)  # equal budgets
    rows = {name: cells for name, cells in _table_rows(os.path.join(out, "table.md")).items() if name != "set"}
    assert sorted(rows) == sorted(sets + ["zero_shot"])
    for name, cells in rows.items():
        assert cells[0] == f"{payload['sizes'][sets[0]]:,}" or name == "zero_shot"
        for cell in cells[1:-1]:  # nll @0, @1, exact match @1: mean ± CI
            assert CELL.match(cell), (name, cell)
    scores = payload["scores"]
    assert all(scores[f"{m}/nll/steps=0"][0] > 0 for m in sets)
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["sizes"] == payload["sizes"]
