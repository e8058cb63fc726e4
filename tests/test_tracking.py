"""Experiment tracking: TensorBoard event files and W&B offline runs hold every meta-step's numbers."""
import glob
import json
import os
import sys

import pytest

import metalearn
from metalearn import tracking
from tests.helpers import SinusoidFamily, mlp

FIT = dict(method="maml", inner_steps=1, meta_batch=2, progress=False)


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


def log_records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_every_meta_step(tmp_path):
    out = tmp_path / "run"
    metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=4, eval_every=2, eval_tasks=2, output_dir=str(out),
                  report_to=["tensorboard"], **FIT)
    series, events = scalars(str(out / "tensorboard"))
    assert set(series) == {"train/query_loss", "train/support_loss_first", "train/grad_norm", "train/learning_rate",
                           "train/skipped", "eval/query_loss"}
    records = log_records(out)
    for key, tag in tracking.METRICS.items():
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [s for s, _ in series[tag]] == [s for s, _ in expected], tag
        assert [v for _, v in series[tag]] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert [s for s, _ in series["eval/query_loss"]] == [2, 4]
    assert "config" in str(events.Tags())


def test_resumed_run_continues_the_tensorboard_curve(tmp_path):
    out = tmp_path / "run"
    metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=2, checkpoint_every=2, output_dir=str(out), **FIT)
    metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=4, checkpoint_every=2, output_dir=str(out),
                  resume=str(out), report_to="tensorboard", **FIT)  # trackers may change on resume
    series, _ = scalars(str(out / "tensorboard"))
    assert [s for s, _ in series["train/query_loss"]] == [3, 4]


def test_a_failed_run_still_leaves_readable_events(tmp_path, monkeypatch):
    fit_module = sys.modules["metalearn.training"]
    real = fit_module.meta_step

    def failing(learner, family, rng, optimizer, scheduler, step, ckpt_path=None):
        if step == 2:
            raise FloatingPointError("meta-step 3: boom")
        return real(learner, family, rng, optimizer, scheduler, step, ckpt_path)

    monkeypatch.setattr(fit_module, "meta_step", failing)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError):
        metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=5, output_dir=str(out), report_to=["tensorboard"],
                      **FIT)
    series, _ = scalars(str(out / "tensorboard"))
    assert [s for s, _ in series["train/query_loss"]] == [1, 2]


def test_wandb_offline_run_writes_its_files_without_network(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=3, eval_every=3, eval_tasks=2, output_dir=str(out),
                  report_to=["wandb"], **FIT)
    assert wandb.run is None  # finished
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    data = open(runs[0], "rb").read()
    for key in ("train/query_loss", "train/grad_norm", "train/learning_rate", "eval/query_loss", "outer.method"):
        assert key.encode() in data, key
    last = log_records(out)[-1]
    assert repr(last["query_loss"]).encode()[:8] in data  # the logged value itself (JSON-encoded by W&B)


def test_report_to_normalizes_and_round_trips():
    from metalearn.config import OuterConfig, RunConfig

    assert [OuterConfig(report_to=v).report_to for v in (None, "none", [], "wandb", ("wandb", "mlflow"))] == [
        [], [], [], ["wandb"], ["wandb", "mlflow"]]
    for value in (None, ["tensorboard"]):
        config = metalearn.make_config(report_to=value)
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_or_missing_tracker_fails_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="report_to=.*tensorbord.*among"):
        metalearn.make_config(report_to=["tensorbord"])
    with pytest.raises(ValueError, match="needs output_dir"):
        metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=1, report_to=["tensorboard"], **FIT)
    real_find_spec = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a))
    fit_module = sys.modules["metalearn.training"]
    monkeypatch.setattr(fit_module, "build_learner", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"'mlflow' is not installed; pip install \"metalearn\[mlflow\]\""):
        metalearn.fit(SinusoidFamily(), model=mlp(), meta_steps=1, output_dir=str(out),
                      report_to=["tensorboard", "mlflow"], **FIT)
    assert not os.path.exists(out)


def test_every_configurable_tracker_has_a_backend():
    from metalearn.config import REPORT_TO

    assert set(tracking.OPENERS) == set(REPORT_TO) == set(tracking.EXTRA)
