"""Bad input raises a clear error naming the problem and the fix, before training and before any file."""
import pytest
import torch

import metalearn
from metalearn.tasks.task import Task
from tests.helpers import CopyFamily, SinusoidFamily, mlp, small_llama
from tests.test_meta_gradients import FusedAttentionRegressor


def fit_fails(tmp_path, match, family=None, **kwargs):
    out = tmp_path / "run"
    with pytest.raises((ValueError, TypeError), match=match):
        metalearn.fit(family or SinusoidFamily(), output_dir=str(out), progress=False, meta_steps=1, **kwargs)
    assert not out.exists(), "nothing may be written when the input is bad"


def test_unknown_model_path(tmp_path):
    fit_fails(tmp_path, "does not exist", family=CopyFamily(), model_name=str(tmp_path / "no-such-model"))


def test_missing_model(tmp_path):
    fit_fails(tmp_path, "name_or_path is not set", family=CopyFamily())


def test_target_modules_that_do_not_exist(tmp_path):
    fit_fails(tmp_path, r"'qq_proj' does not exist.*q_proj", family=CopyFamily(), model=small_llama(),
              target_modules=["qq_proj"])


def test_a_base_that_already_holds_adapters(tmp_path):
    base = small_llama()
    metalearn.fit(CopyFamily(), model=base, method="fomaml", inner_steps=1, meta_steps=0, lora_r=2,
                  target_modules=["q_proj"], progress=False)  # attaches LoRA to this very object
    fit_fails(tmp_path, r"already holds peft adapter layers.*fresh copy.*unload\(\)", family=CopyFamily(), model=base,
              method="fomaml", inner_steps=1, lora_r=2, target_modules=["q_proj"])


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile", "metasgd"])
def test_inner_method_with_zero_steps(tmp_path, method):
    fit_fails(tmp_path, "inner.steps=0", model=mlp(), method=method, inner_steps=0)


def test_second_order_without_double_backward(tmp_path):
    fit_fails(tmp_path, "second-order meta-gradients are impossible.*fomaml", model=FusedAttentionRegressor(),
              method="maml")


def test_second_order_with_fused_sdpa_attention_on_a_transformer(tmp_path):
    fit_fails(tmp_path, "second-order meta-gradients are impossible.*eager", family=CopyFamily(), model=small_llama(),
              method="maml", attn_implementation="sdpa", target_modules=["q_proj"])


def test_empty_support_or_query():
    x = torch.zeros(0, 1)
    with pytest.raises(ValueError, match="support set is empty"):
        Task({"x": x, "y": x}, {"x": torch.zeros(2, 1), "y": torch.zeros(2, 1)}, "regression", task_id="t")
    with pytest.raises(ValueError, match="query set is empty"):
        Task({"x": torch.zeros(2, 1), "y": torch.zeros(2, 1)}, {"x": x, "y": x}, "regression", task_id="t")


def test_family_that_samples_empty_query_fails_before_training(tmp_path):
    class Broken:
        kind = "regression"

        def sample(self, split, rng):
            return Task({"x": torch.zeros(2, 1), "y": torch.zeros(2, 1)}, {"x": torch.zeros(0, 1), "y": torch.zeros(0, 1)},
                        "regression")

    fit_fails(tmp_path, "query set is empty", family=Broken(), model=mlp())


def test_higher_backend_on_peft_model(tmp_path):
    fit_fails(tmp_path, "higher cannot patch peft", family=CopyFamily(), model=small_llama(), backend="higher",
              target_modules=["q_proj"])


def test_not_a_family(tmp_path):
    fit_fails(tmp_path, "not a task family", family=object(), model=mlp())


@pytest.mark.parametrize("key,value,match", [
    ("inner_lr", -1.0, "lr=-1.0"), ("lora_r", 0, "lora_r=0"), ("method", "mamll", "method='mamll'"),
    ("meta_batch", 0, "meta_batch=0"), ("quantization", "nf5", "quantization='nf5'"),
    ("lr", 0.1, "ambiguous"), ("no_such_setting", 1, "unknown setting"),
])
def test_bad_settings(tmp_path, key, value, match):
    fit_fails(tmp_path, match, model=mlp(), **{key: value})


def test_learned_head_with_wrong_number_of_classes():
    from metalearn.training import make_config

    with pytest.raises(ValueError, match="n_way"):
        make_config(head="learned")


def test_load_missing_or_corrupted(tmp_path):
    with pytest.raises(FileNotFoundError):
        metalearn.load(str(tmp_path / "nothing"))
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="metalearn.json is missing"):
        metalearn.load(str(tmp_path / "half"))
    (tmp_path / "half" / "metalearn.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        metalearn.load(str(tmp_path / "half"))
