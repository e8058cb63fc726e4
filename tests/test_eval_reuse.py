"""Evaluation that does no work twice: one trajectory per step size, cached features, batched episodes.

``reuse=False`` is the harness as first written (every step count adapted from scratch, every episode
encoded); the fast path must give its numbers: exactly where only the trajectory is shared, up to
floating-point rounding where features are cached or encoded in length-sorted batches.
"""
import numpy as np
import pytest
import torch

from metalearn.build import build_learner
from metalearn.eval import evaluate
from metalearn.eval import features as features_mod
from metalearn.eval.adaptation import trajectory
from metalearn.eval.runner import support_episode
from metalearn.foundation import byte_tokenizer
from metalearn.learner import Learner
from metalearn.training import make_config
from tests.helpers import CopyFamily, IntentFamily, SinusoidFamily, mlp, small_bert, small_llama


def by_key(results):
    return {(r["method"], r["steps"], r["episode"]): r for r in results.records}


def regression_learners():
    metasgd = build_learner(make_config(method="metasgd", per_step=True, inner_steps=2, inner_lr=0.02), mlp(1))
    with torch.no_grad():  # distinct learned step sizes per step, so the schedule past step 2 matters
        for t in metasgd.step_sizes.values():
            t.copy_(torch.tensor([0.03, 0.01]))
    adam = build_learner(make_config(method="fomaml", inner_optimizer="adam", inner_lr=0.01), mlp(2))
    return {"metasgd": metasgd, "adam": adam}


def test_one_trajectory_per_step_size_gives_exactly_the_separate_runs_numbers():
    kwargs = dict(baselines=["random_init"], steps=[0, 1, 2, 5], episodes=6, lr_grid=(0.5, 1.0, 2.0),
                  val_episodes=3, progress=False)
    old = evaluate(regression_learners(), SinusoidFamily(k=5, q=5), reuse=False, **kwargs)
    new = evaluate(regression_learners(), SinusoidFamily(k=5, q=5), **kwargs)
    assert by_key(new) == by_key(old)  # every metric of every method, step count and episode, bit for bit
    assert new.tuning == old.tuning and len(old.tuning) == 3 * 3
    assert len({t["scale"] for t in new.tuning}) > 1  # different step sizes: more than one trajectory was run


def test_trajectory_snapshots_equal_separate_adaptations_on_a_4bit_llama():
    learner = build_learner(make_config(method="fomaml", quantization="nf4", inner_optimizer="adam", lora_r=2,
                                        target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian",
                                        prompt_tokens=2, inner_lr=0.05), small_llama())
    episode = support_episode(learner, CopyFamily().sample("test", np.random.default_rng(0)))
    snapshots = trajectory(learner, episode, [0, 1, 3], scale=2.0)
    assert set(snapshots) == {0, 1, 3}
    for steps, params in snapshots.items():
        alone, _ = learner.adapt_params(episode, steps, scale=2.0)
        assert all(torch.equal(params[n], alone[n]) for n in alone)
    lora_b = next(n for n in snapshots[0] if "lora_B" in n)
    assert not torch.equal(snapshots[3][lora_b], snapshots[1][lora_b])  # the steps did move the adapters


def encoder_learner(seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    config = make_config(method="fomaml", inner_steps=1, inner_lr=0.5, lora_r=2, init_lora_weights="gaussian",
                         prompt_tokens=2, head="prototype", head_metric="cosine", model_type="encoder",
                         attn_implementation="eager", target_modules=["query", "value"])
    return build_learner(config, small_bert(seed), byte_tokenizer())


@pytest.fixture()
def encoded(monkeypatch):
    """Every text each feature cache runs through the model, per cache."""
    seen: dict[int, list[str]] = {}
    original = features_mod.FeatureCache._encode

    def spy(self, texts):
        seen.setdefault(id(self), []).extend(texts)
        return original(self, texts)

    monkeypatch.setattr(features_mod.FeatureCache, "_encode", spy)
    return seen


def test_encoder_cache_encodes_each_text_once_and_keeps_the_numbers(encoded):
    kwargs = dict(baselines=["zero_shot", "prototypes", "linear_probe", "random_init"], steps=[0, 1, 2],
                  episodes=8, lr_grid=(0.5, 2.0), val_episodes=2, progress=False)
    old = evaluate({"proto": encoder_learner()}, IntentFamily(), reuse=False, **kwargs)
    assert not encoded  # the original path encodes per episode
    new = evaluate({"proto": encoder_learner()}, IntentFamily(), **kwargs)
    assert new.tuning == old.tuning  # the search scores exact trajectories
    assert len(encoded) == 3  # the frozen base, and each learner's step 0 (proto, random_init)
    for per_cache in encoded.values():
        assert len(per_cache) == len(set(per_cache)) > 0  # each text once per cache
    old_rows, new_rows = by_key(old), by_key(new)
    assert set(old_rows) == set(new_rows)
    for key, row in old_rows.items():
        assert new_rows[key]["accuracy"] == row["accuracy"], key
        assert new_rows[key]["macro_f1"] == row["macro_f1"], key
        if "nll" in row:
            assert new_rows[key]["nll"] == pytest.approx(row["nll"], rel=1e-5, abs=1e-6), key
    moved = [k for k in old_rows if k[1] > 0 and k[0] in ("proto", "random_init")
             and old_rows[k]["nll"] != old_rows[(k[0], 0, k[2])]["nll"]]
    assert moved  # adaptation changed the scores, so the step > 0 rows were really compared


@pytest.mark.parametrize("family, make", [(SinusoidFamily(k=5, q=5), lambda: regression_learners()["adam"]),
                                          (IntentFamily(), encoder_learner)])
def test_batched_episodes_equal_one_at_a_time(family, make, monkeypatch):
    calls = []
    original = Learner.inner_adapt_batched

    def spy(self, support, *args, **kwargs):
        calls.append(next(iter(support.values())).shape[0])
        return original(self, support, *args, **kwargs)

    monkeypatch.setattr(Learner, "inner_adapt_batched", spy)
    kwargs = dict(baselines=["random_init"], steps=[0, 2], episodes=7, lr_grid=(0.5, 2.0), val_episodes=3,
                  progress=False)
    one = evaluate({"m": make()}, family, **kwargs)
    assert not calls
    many = evaluate({"m": make()}, family, episode_batch=3, **kwargs)
    assert 3 in calls  # test episodes went through the batched inner loop, three at a time
    one_rows, many_rows = by_key(one), by_key(many)
    for key, row in one_rows.items():
        for metric, value in row.items():
            if isinstance(value, float):
                assert many_rows[key][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, metric)
    assert [t["scale"] for t in many.tuning] == [t["scale"] for t in one.tuning]


@pytest.mark.parametrize("metric, support_temperature", [("cosine", None), ("cosine", 0.5), ("euclidean", None)])
def test_adaptation_shares_the_prototype_forward_with_the_first_step_and_keeps_the_numbers(metric,
                                                                                           support_temperature):
    torch.manual_seed(0)
    config = make_config(method="fomaml", inner_steps=1, inner_lr=0.5, lora_r=2, init_lora_weights="gaussian",
                         prompt_tokens=2, head="prototype", head_metric=metric, model_type="encoder",
                         support_temperature=support_temperature, attn_implementation="eager",
                         target_modules=["query", "value"])
    learner = build_learner(config, small_bert(0), byte_tokenizer())
    episode = support_episode(learner, IntentFamily().sample("test", np.random.default_rng(1)))
    forwards = []
    hook = learner.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        with torch.enable_grad():
            full, full_losses = learner.inner_adapt(episode, steps=3, order="first")  # head from its own forward
            n_full = len(forwards)
            shared, shared_losses = learner.inner_adapt(episode, steps=3, order="first", meta_gradient=False)
    finally:
        hook.remove()
    assert (n_full, len(forwards) - n_full) == (4, 3)  # prototypes + 3 steps, vs 3 steps
    assert shared_losses == full_losses
    assert set(shared) == set(full) and all(torch.equal(shared[n].detach(), full[n].detach()) for n in full)
    assert not torch.equal(full["head.weight"], learner.start_params(episode)["head.weight"])  # the steps moved it
    with pytest.raises(ValueError, match="order must be 'first'"):
        learner.inner_adapt(episode, steps=1, order="second", meta_gradient=False)
