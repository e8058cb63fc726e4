"""Property tests: random settings either run or raise a ValueError that names the bad value."""
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metalearn
from metalearn.build import build_learner
from metalearn.config import RunConfig
from metalearn.tasks import NWayKShot, load
from metalearn.training import make_config
from tests.helpers import SinusoidFamily, mlp, small_llama

weird = st.one_of(st.none(), st.booleans(), st.integers(-3, 6), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=6), st.lists(st.integers(0, 3), max_size=3))
KEYS = ["inner_steps", "inner_lr", "meta_lr", "meta_batch", "meta_steps", "lora_r", "lora_dropout", "lora_alpha",
        "prompt_tokens", "prefix_tokens", "prefix_projection", "lora_plus_ratio", "inner_optimizer", "method", "order",
        "truncate", "inner_clip_norm", "outer_clip_norm", "quantization", "schedule", "head", "target_modules",
        "adam_eps", "warmup_steps", "checkpoint_every", "on_nonfinite", "max_length", "seed", "weight_decay",
        "trainable", "compute_dtype"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), weird, min_size=1, max_size=4))
def test_random_settings_validate_or_name_the_bad_value(settings_):
    try:
        config = make_config(**settings_)
    except ValueError as err:
        message = str(err)
        named = [k for k in settings_ if k.split("_", 1)[-1] in message or k in message]
        assert named or "inner.steps=0" in message or "method=" in message, (settings_, message)
        return
    assert isinstance(config, RunConfig)
    assert RunConfig.from_dict(config.to_dict()) == config  # round trip


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["base", "adapter", "inner", "outer", "extra"]),
                       st.dictionaries(st.sampled_from(["lr", "steps", "lora_r", "bogus", "method", "seed"]), weird,
                                       max_size=3), max_size=3))
def test_random_config_files_load_or_raise_clearly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        RunConfig.from_dict(yaml.safe_load(path.read_text()) or {})
    except ValueError as err:
        assert "invalid" in str(err) or "unknown" in str(err) or "inner.steps=0" in str(err)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rank=st.integers(-2, 9), targets=st.lists(st.sampled_from(["q_proj", "v_proj", "k_proj", "o_proj", "mlp",
                                                                   "nope", "up_proj"]), min_size=1, max_size=3))
def test_random_ranks_and_module_names_build_or_raise(rank, targets):
    try:
        learner = build_learner(make_config(lora_r=rank, target_modules=targets), small_llama())
    except ValueError as err:
        assert f"lora_r={rank}" in str(err) or any(repr(t) in str(err) for t in targets), str(err)
        return
    assert rank > 0 and learner.init and all("lora_" in n for n in learner.init)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(-1, 12), k=st.integers(-1, 12), q=st.integers(-1, 12))
def test_random_n_k_q_sample_or_raise(n, k, q):
    rows = {"text": [f"example {i} of class {c}" for c in range(10) for i in range(8)],
            "label": [f"class{c}" for c in range(10) for i in range(8)]}
    try:
        family = NWayKShot(rows, n_way=n, k_shot=k, q_query=q, splits=(0.6, 0.2, 0.2))
        task = family.sample("train", np.random.default_rng(0))
    except ValueError as err:
        assert any(name in str(err) for name in ("n_way", "k_shot", "q_query")), str(err)
        return
    assert len(task.support["text"]) == n * k and len(task.query["text"]) == n * q
    assert sorted(set(task.support["label"].tolist())) == list(range(n))


@settings(max_examples=15, deadline=None)
@given(steps=st.integers(0, 3), lr=st.floats(1e-4, 0.5), method=st.sampled_from(["maml", "fomaml", "reptile", "metasgd",
                                                                                    "multitask"]))
def test_random_runs_either_finish_finite_or_raise(steps, lr, method):
    try:
        learner = metalearn.fit(SinusoidFamily(), model=mlp(), method=method, inner_steps=steps, inner_lr=lr,
                                meta_steps=2, meta_batch=2, progress=False, on_nonfinite="skip")
    except ValueError as err:
        assert steps == 0 and "inner.steps=0" in str(err)
        return
    assert all(np.isfinite(t.detach().numpy()).all() for t in learner.init.values())


def test_unknown_spec_name_is_a_clear_error():
    with pytest.raises(ValueError, match="no task spec named 'clinc151'"):
        load("clinc151")
