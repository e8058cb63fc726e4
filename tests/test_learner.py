"""Learner: fit lowers loss, adapt, save/reload through peft and metalearn.load, the base is never copied."""
import json
import os

import numpy as np
import pytest
import torch

import metalearn
from metalearn import algorithms
from metalearn.adapters import load_adapters
from metalearn.build import build_learner
from metalearn.model import TaskModel
from metalearn.training import make_config
from tests.helpers import CopyFamily, SinusoidFamily, mlp, sinusoid_task, small_llama


def post_adaptation_loss(learner, n_tasks=25, steps=5, seed=123):
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(n_tasks):
        task = sinusoid_task(rng, k=10, q=20)
        losses.append(learner.adapt(task.support, steps=steps).loss(task.query))
    return float(np.mean(losses))


def test_fit_on_sinusoids_beats_random_init():
    family = SinusoidFamily()
    kwargs = dict(inner_steps=1, inner_lr=0.01, meta_batch=8, meta_lr=1e-2, progress=False)
    learner = metalearn.fit(family, model=mlp(seed=1), method="fomaml", meta_steps=400, **kwargs)
    random_init = metalearn.fit(family, model=mlp(seed=1), method="fomaml", meta_steps=0, **kwargs)
    meta, rand = post_adaptation_loss(learner), post_adaptation_loss(random_init)
    assert meta < 0.5 * rand, (meta, rand)


def test_fit_writes_log_plot_and_learner(tmp_path):
    out = tmp_path / "run"
    learner = metalearn.fit(SinusoidFamily(), model=mlp(), method="maml", inner_steps=1, meta_steps=4, meta_batch=2,
                            eval_every=2, eval_tasks=2, output_dir=str(out), progress=False)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "val_query_loss" in records[1] and np.isfinite(records[1]["val_query_loss"])
    assert (out / "training_curve.png").stat().st_size > 1000
    reloaded = metalearn.load(str(out / "learner"), model=mlp(seed=9))
    for name, value in learner.init.items():
        torch.testing.assert_close(reloaded.init[name], value.detach())


def llama_learner(**overrides):
    kwargs = dict(method="metasgd", inner_steps=2, lora_r=4, target_modules=["q_proj", "v_proj"],
                  init_lora_weights="gaussian", prompt_tokens=3)
    kwargs.update(overrides)
    return build_learner(make_config(**kwargs), small_llama())


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_saved_learner_reloads_through_peft_and_metalearn_load(tmp_path, quantization):
    learner = llama_learner(quantization=quantization)
    with torch.no_grad():  # move the init away from peft's own initialization
        for t in learner.init.values():
            t.add_(0.05 * torch.randn_like(t))
        for t in learner.step_sizes.values():
            t.mul_(1.7)
    task = CopyFamily().sample("test", np.random.default_rng(0))
    episode = learner.episode(task)
    with torch.no_grad():
        expected = float(learner.loss(learner.init, episode.query, "generation"))
    path = str(tmp_path / "init")
    learner.save(path)
    assert os.path.exists(os.path.join(path, "adapter_config.json"))
    assert os.path.exists(os.path.join(path, "prompt", "adapter_config.json"))

    reloaded = metalearn.load(path, model=small_llama())
    for name in learner.init:
        torch.testing.assert_close(reloaded.init[name], learner.init[name].detach())
    for name in learner.step_sizes:
        torch.testing.assert_close(reloaded.step_sizes[name], learner.step_sizes[name].detach())
    with torch.no_grad():
        assert float(reloaded.loss(reloaded.init, reloaded.episode(task).query, "generation")) == pytest.approx(expected)
    adapted_a = learner.adapt(task.support, steps=2).loss(task.query)
    adapted_b = reloaded.adapt(task.support, steps=2).loss(task.query)
    assert adapted_a == pytest.approx(adapted_b, rel=1e-6)

    if quantization is None:  # plain peft, no metalearn state: the same outputs
        peft_model = load_adapters(small_llama(), path)
        plain = TaskModel(peft_model, "causal", learner.model.tokenizer, n_virtual_tokens=3)
        with torch.no_grad():
            assert float(plain(plain.encode(task.query, "generation"))) == pytest.approx(expected, rel=1e-6)


def test_save_replaces_atomically_and_keeps_old_on_failure(tmp_path, monkeypatch):
    learner = build_learner(make_config(method="maml", inner_steps=1), mlp())
    path = str(tmp_path / "init")
    learner.save(path)
    before = sorted(os.listdir(path))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        learner.save(path)
    assert sorted(os.listdir(path)) == before
    assert [p for p in os.listdir(tmp_path) if p != "init"] == []  # no temp folder left behind


def test_frozen_base_is_shared_never_copied():
    learner = llama_learner(method="maml", quantization="nf4")
    base_ptrs = {n: p.data_ptr() for n, p in learner.adapted.module.named_parameters() if not p.requires_grad}
    family = CopyFamily()
    rng = np.random.default_rng(0)
    for _ in range(2):
        algorithms.maml.task_gradient(learner, learner.episode(family.sample("train", rng)))
    after = {n: p.data_ptr() for n, p in learner.adapted.module.named_parameters() if not p.requires_grad}
    assert base_ptrs == after
    assert not any(p.requires_grad for n, p in learner.adapted.module.named_parameters() if n not in learner.init)


def test_adapt_predicts_and_generates():
    learner = llama_learner(method="maml")
    task = CopyFamily().sample("test", np.random.default_rng(1))
    adapted = learner.adapt(task.support, steps=1)
    outputs = adapted.predict(task.query, max_new_tokens=4)
    assert len(outputs) == len(task.query["prompt"]) and all(isinstance(o, str) for o in outputs)
    reg = build_learner(make_config(method="maml", inner_steps=1), mlp())
    sin = sinusoid_task(np.random.default_rng(0))
    assert reg.adapt(sin.support).predict(sin.query).shape == sin.query["y"].shape


def test_protonet_trains_the_encoder_adapters_with_a_prototypical_loss():
    from metalearn.foundation import byte_tokenizer
    from tests.helpers import IntentFamily, small_bert

    family = IntentFamily()
    learner = metalearn.fit(family, model=small_bert(), tokenizer=byte_tokenizer(), method="protonet", lora_r=4,
                            target_modules=["query", "value"], init_lora_weights="gaussian", head_metric="cosine",
                            head_temperature=0.1, meta_steps=30, meta_batch=2, meta_lr=1e-2, progress=False)
    assert learner.config.adapter.head == "prototype"
    losses = [r["query_loss"] for r in learner.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    with pytest.raises(ValueError, match="protonet' needs a classification family"):
        metalearn.fit(SinusoidFamily(), model=mlp(), method="protonet", progress=False)


def test_generation_keeps_the_end_of_an_overlong_prompt_like_training():
    learner = llama_learner(method="fomaml", max_length=24)
    task = CopyFamily().sample("test", np.random.default_rng(2))
    long_prompts = ["x" * 200 + p for p in task.query["prompt"]]
    adapted = learner.adapt(task.support, steps=1)
    outputs = adapted.generate(long_prompts, max_new_tokens=4)
    tails = adapted.generate([p[-20:] for p in long_prompts], max_new_tokens=4)  # 24 - 4 new tokens kept
    assert outputs == tails and len(outputs) == len(long_prompts)


def test_support_temperature_gives_the_one_shot_inner_loop_a_loss():
    """Issue 13: at 1-shot each support example is its own prototype; on a real encoder a cosine head at 0.05 has ~0
    support loss (all-MiniLM-L6-v2: < 1e-4), so the inner loop is idle. A support temperature sets the inner loss only."""
    import torch.nn.functional as F

    from metalearn.foundation import byte_tokenizer
    from metalearn.functional import outputs
    from metalearn.tasks import Task
    from tests.helpers import small_bert

    rows = {"text": ["please play some music", "set an alarm for six", "what is the weather"], "label": [0, 1, 2]}
    task = Task(rows, {"text": ["play a song", "wake me at seven", "is it raining"], "label": [0, 1, 2]},
                "classification")
    settings = dict(method="fomaml", inner_steps=1, lora_r=2, target_modules=["query", "value"], head="prototype",
                    head_metric="cosine", head_temperature=0.05)
    idle = build_learner(make_config(**settings), small_bert(), byte_tokenizer())
    warm = build_learner(make_config(support_temperature=0.5, **settings), small_bert(), byte_tokenizer())
    episode = warm.episode(task)
    params = warm.start_params(episode)
    with torch.no_grad():
        cos = F.normalize(outputs(warm.model, params, episode.support), dim=-1) @ F.normalize(
            params["head.weight"], dim=-1).t()  # (3 support, 3 classes); the diagonal is 1
        query_cos = F.normalize(outputs(warm.model, params, episode.query), dim=-1) @ F.normalize(
            params["head.weight"], dim=-1).t()
        labels = episode.support["label"]
        assert float(warm.support_loss(params, episode.support, "classification")) == pytest.approx(
            float(F.cross_entropy(cos / 0.5, labels)), rel=1e-5)
        assert float(warm.loss(params, episode.query, "classification")) == pytest.approx(  # the query keeps 0.05
            float(F.cross_entropy(query_cos / 0.05, episode.query["label"])), rel=1e-5)
    _, warm_losses = warm.inner_adapt(episode, steps=1, order="first")
    _, idle_losses = idle.inner_adapt(idle.episode(task), steps=1, order="first")
    assert warm_losses[0] == pytest.approx(float(F.cross_entropy(cos / 0.5, labels)), rel=1e-5)
    assert idle_losses[0] == pytest.approx(float(F.cross_entropy(cos / 0.05, labels)), rel=1e-4)  # default: the head's
    with pytest.raises(ValueError, match="support_temperature=0.5 is invalid with adapter.head_metric='euclidean'"):
        make_config(method="fomaml", head="prototype", support_temperature=0.5)
    with pytest.raises(ValueError, match="support_temperature=-1"):
        make_config(support_temperature=-1)
