"""More bad input: each gets an error naming the file or field and the fix, before any work is done."""
import json
import os

import pytest
import torch

import metalearn
from metalearn.build import build_learner
from metalearn.cli import build_model, main
from metalearn.tasks import Task
from metalearn.training import make_config
from tests.helpers import IntentFamily, SinusoidFamily, mlp
from tests.test_bad_input import fit_fails


def saved_lora_mlp(path, **overrides):
    learner = build_learner(make_config(lora_r=2, target_modules=["0", "2"], **overrides), mlp())
    learner.save(str(path))
    return learner


@pytest.fixture
def no_model_building(monkeypatch):
    """Loading must fail before the base model is built."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the bad input was noticed")

    monkeypatch.setattr("metalearn.build.build_learner", refuse)


# ------------------------------------------------------------------ saved learners

def test_non_utf8_sidecar(tmp_path, no_model_building):
    saved_lora_mlp(tmp_path / "init")
    (tmp_path / "init" / "metalearn.json").write_bytes(b'{"config": "\xff\xfe"}')
    with pytest.raises(ValueError, match=r"metalearn.json is not UTF-8 text \(byte 0xff at offset 12\).*re-save"):
        metalearn.load(str(tmp_path / "init"))


@pytest.mark.parametrize("with_checksums", [True, False])
def test_missing_adapter_weights(tmp_path, no_model_building, with_checksums):
    path = tmp_path / "init"
    saved_lora_mlp(path)
    if not with_checksums:  # a sidecar from before checksums: the adapter config still demands its weights
        meta = json.loads((path / "metalearn.json").read_text())
        del meta["checksums"]
        (path / "metalearn.json").write_text(json.dumps(meta))
    os.remove(path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"adapter_model.safetensors' is missing.*partial.*re-save"):
        metalearn.load(str(path))


def test_adapter_tensors_whose_shape_does_not_match_the_config(tmp_path):
    path = tmp_path / "init"
    saved_lora_mlp(path)
    meta = json.loads((path / "metalearn.json").read_text())
    meta["config"]["adapter"]["lora_r"] = 4  # the sidecar now promises rank 4; the adapter holds rank 2
    (path / "metalearn.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors': tensor '.*0.lora_A.weight' has shape \(2, 1\) "
                                         r"but the config in metalearn.json gives \(4, 1\).*Re-save"):
        metalearn.load(str(path), model=mlp())


def test_load_given_a_file(tmp_path):
    saved_lora_mlp(tmp_path / "init")
    with pytest.raises(ValueError, match=r"is a file, not a saved learner folder; pass its folder .*init'"):
        metalearn.load(str(tmp_path / "init" / "metalearn.json"))


# ------------------------------------------------------------------ fit

def test_anil_trainable_names_that_match_nothing(tmp_path):
    fit_fails(tmp_path, r"inner.trainable entries \['head'\] match no adaptable tensor; the names are "
              r"\['0.weight'", model=mlp(), method="anil", trainable=["head"])


class FlatTargets:
    """Sinusoids with targets of shape (n,) while the MLP outputs (n, 1)."""

    kind = "regression"

    def sample(self, split, rng):
        task = SinusoidFamily().sample(split, rng)
        flat = lambda part: {"x": part["x"], "y": part["y"].reshape(-1)}  # noqa: E731
        return Task(flat(task.support), flat(task.query), "regression", task_id=task.task_id)


def test_regression_targets_of_another_shape_than_the_outputs(tmp_path):
    fit_fails(tmp_path, r"targets y have shape \(10,\) but the model outputs \(10, 1\).*y.reshape\(10, 1\)",
              family=FlatTargets(), model=mlp(), method="fomaml")


def test_labels_outside_0_to_n_minus_1_name_the_task():
    text = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"task 'intents-7': query labels \[2\] lie outside 0..1"):
        Task({"text": text[:2], "label": torch.tensor([0, 1])}, {"text": text, "label": torch.tensor([0, 1, 2])},
             "classification", task_id="intents-7")
    with pytest.raises(ValueError, match=r"task 'named': support labels \[3\] lie outside 0..2 .*label_names"):
        Task({"text": text, "label": [0, 1, 3]}, {"text": text, "label": [0, 1, 2]}, "classification",
             task_id="named", label_names=("x", "y", "z"))
    with pytest.raises(ValueError, match=r"task 'neg': support labels \[-1\]"):
        Task({"text": text, "label": [0, 1, -1]}, {"text": text, "label": [0, 1, 1]}, "classification", task_id="neg")


class ShiftedLabels(IntentFamily):
    """Intent episodes whose labels run 1..N instead of 0..N-1."""

    def sample(self, split, rng):
        task = super().sample(split, rng)
        shift = lambda part: {"text": part["text"], "label": part["label"] + 1}  # noqa: E731
        return Task(shift(task.support), shift(task.query), "classification", task_id=task.task_id,
                    label_names=task.label_names)


def test_a_family_with_shifted_labels_fails_before_training(tmp_path):
    fit_fails(tmp_path, r"task 'intents-.*': support labels \[3\] lie outside 0..2", family=ShiftedLabels(),
              model=mlp())


def test_a_family_whose_sample_returns_a_dict(tmp_path):
    class DictFamily:
        kind = "regression"

        def sample(self, split, rng):
            task = SinusoidFamily().sample(split, rng)
            return {"support": task.support, "query": task.query, "kind": "regression"}

    fit_fails(tmp_path, r"DictFamily.sample\('train', rng\) returned a dict, not a metalearn.tasks.Task",
              family=DictFamily(), model=mlp())


class AllNaN:
    kind = "regression"

    def sample(self, split, rng):
        task = SinusoidFamily().sample(split, rng)
        nan = {"x": task.support["x"], "y": torch.full_like(task.support["y"], float("nan"))}
        return Task(nan, task.query, "regression", task_id="nan-task")


def test_skip_mode_that_skips_every_step_raises_instead_of_returning_the_untrained_init(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"every one of the 3 meta-steps was skipped .*nan-task.*untrained"):
        metalearn.fit(AllNaN(), model=mlp(), method="fomaml", inner_steps=1, meta_batch=2, meta_steps=3,
                      on_nonfinite="skip", output_dir=str(out), progress=False)
    assert not (out / "learner").exists(), "no untrained learner may be saved as the result"


# ------------------------------------------------------------------ command line

def test_cli_eval_with_a_damaged_run_json(tmp_path, capsys):
    run = tmp_path / "run"
    saved_lora_mlp(run / "learner")
    (run / "run.json").write_text('{\n  "family": sinusoid\n}')
    assert main(["eval", "--learner", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "run.json is not valid JSON" in err and "rewrite it" in err


def test_cli_eval_model_option_takes_the_yaml_mapping_its_help_promises(tmp_path, capsys):
    model, _ = build_model({"name": "mlp", "hidden": [16], "seed": 3})
    path = tmp_path / "learner"
    build_learner(make_config(), model).save(str(path))
    code = main(["eval", "--learner", f"mine={path}", "--family", "sinusoid", "--model",
                 "{name: mlp, hidden: [16], seed: 3}", "--steps", "0", "--episodes", "2", "--lr-grid", "none",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "| mine |" in capsys.readouterr().out
    assert main(["eval", "--learner", str(path), "--family", "sinusoid", "--model", "{name: mlp", "--quiet"]) == 2
    assert "--model '{name: mlp' is not valid YAML" in capsys.readouterr().err
