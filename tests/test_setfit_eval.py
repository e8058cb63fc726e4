"""SetFit through metalearn.evaluate and the CLI: same episodes as every method, timed, and a clear missing-extra error."""
import os
import sys

import numpy as np
import pytest
import torch

import metalearn
from metalearn.build import build_learner
from metalearn.eval import SetFitOptions
from metalearn.eval.baselines import setfit_episode
from metalearn.tasks import Task
from metalearn.training import make_config
from tests.test_setfit_baseline import WORDS, tiny_encoder  # noqa: F401 - the fixture, shared

FAST = SetFitOptions(num_iterations=2)


class WordFamily:
    """3-way 2-shot episodes whose classes are word lists (trivially separable)."""

    kind = "classification"

    def sample(self, split, rng):
        texts = {c: [" ".join(rng.choice(ws, 3)) for _ in range(4)] for c, ws in WORDS.items()}
        rows = lambda part: [(t, c) for c in WORDS for t in (texts[c][:2] if part == 0 else texts[c][2:])]  # noqa: E731
        cols = lambda r: {"text": [t for t, _ in r], "label": torch.tensor([c for _, c in r])}  # noqa: E731
        return Task(cols(rows(0)), cols(rows(1)), "classification", label_names=("fruit", "animal", "colour"),
                    task_id=f"{split}-" + "|".join(texts[0]))


def learner_on(folder):
    config = make_config(model_name=folder, model_type="encoder", method="fomaml", inner_steps=1, lora_r=2,
                         target_modules=["query", "value"], head="prototype")
    return build_learner(config)


def test_setfit_runs_on_the_same_episodes_and_is_timed(tiny_encoder):  # noqa: F811
    learner = learner_on(tiny_encoder)
    results = metalearn.evaluate({"meta": learner}, WordFamily(), baselines=["setfit", "prototypes"], steps=[0, 1],
                                 episodes=2, lr_grid=None, setfit=FAST, progress=False)
    by = {(r["method"], r["episode"]): r for r in results.records if r["steps"] == 0}
    assert {by["setfit", i]["task_id"] for i in range(2)} == {by["meta", i]["task_id"] for i in range(2)}
    tasks = [WordFamily().sample("test", np.random.default_rng(0)) for _ in range(1)]
    assert by["setfit", 0]["task_id"] == tasks[0].task_id
    direct = setfit_episode(learner, tasks[0], FAST, seed=0)  # seed + episode, as evaluate trains it
    assert by["setfit", 0]["accuracy"] == direct["accuracy"] and by["setfit", 0]["nll"] == pytest.approx(direct["nll"])
    mean, _ = results.seconds("setfit", 0)
    assert mean > 0 and results.seconds("meta", 1)[0] > 0 and results.seconds("prototypes", 0)[0] >= 0
    assert "Seconds per episode" in results.table() and results.settings["setfit"]["num_iterations"] == 2
    d = results.diff("setfit", "accuracy", 0) if results.settings["reference"] else None
    assert d is None or np.isfinite(d[0])


def test_missing_extra_and_a_base_built_in_memory_are_refused_before_any_work(tiny_encoder, tmp_path,  # noqa: F811
                                                                               monkeypatch):
    learner = learner_on(tiny_encoder)
    out = tmp_path / "eval"
    monkeypatch.setitem(sys.modules, "setfit", None)
    with pytest.raises(ImportError, match=r"metalearn\[setfit\]"):
        metalearn.evaluate({"meta": learner}, WordFamily(), baselines=["setfit"], output_dir=str(out), progress=False)
    assert not out.exists()
    monkeypatch.undo()
    learner.config.base.name_or_path = None  # as for a model passed in memory
    with pytest.raises(ValueError, match="built in memory.*save_pretrained"):
        metalearn.evaluate({"meta": learner}, WordFamily(), baselines=["setfit"], progress=False)
    with pytest.raises(ValueError, match="setfit=.*SetFitOptions"):
        metalearn.evaluate({"meta": learner_on(tiny_encoder)}, WordFamily(), baselines=["setfit"], setfit={"x": 1},
                           progress=False)


def test_setfit_through_the_cli(tiny_encoder, tmp_path, capsys):  # noqa: F811
    from metalearn.cli import main

    folder = str(tmp_path / "learner")
    learner_on(tiny_encoder).save(folder)
    code = main(["eval", "--learner", f"meta={folder}", "--family", "clinc150", "--family-set", "n_way=2",
                 "--baselines", "setfit", "--setfit-set", "num_iterations=1", "--steps", "0", "--episodes", "2",
                 "--lr-grid", "none", "--quiet", "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| setfit |" in printed and "Seconds per episode" in printed
    saved = metalearn.eval.EvalResults.load(str(tmp_path / "eval"))
    assert {r["method"] for r in saved.records} == {"meta", "setfit"} and saved.timing
    assert os.path.isfile(tmp_path / "eval" / "results.md")
    assert main(["eval", "--learner", folder, "--family", "clinc150", "--baselines", "setfit",
                 "--setfit-set", "bogus=1"]) != 0
    assert "--setfit-set" in capsys.readouterr().err
