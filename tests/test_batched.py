"""Task batching: the batched meta-gradient equals the per-task loop's, falls back where it must."""
import logging

import numpy as np
import pytest
import torch

from metalearn import algorithms
from metalearn.build import build_learner
from metalearn.tasks import Task
from metalearn.training import make_config
from tests.helpers import CopyFamily, mlp, saved_bytes_during, sinusoid_task, small_llama

LLAMA = dict(lora_r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian", prompt_tokens=2,
             inner_steps=2, inner_lr=0.05)


def both_ways(learner, episodes, method):
    """(looped, batched) meta_gradient outputs on the same learner and episodes."""
    out = []
    for mode in ("off", "on"):
        learner.config.inner.task_batching = mode
        out.append(algorithms.meta_gradient(learner, episodes, method))
    return out


def assert_same(looped, batched, rtol=1e-5, atol=1e-6):
    (sum_l, res_l), (sum_b, res_b) = looped, batched
    assert set(sum_l) == set(sum_b)
    assert any(float(g.abs().sum()) > 0 for g in sum_l.values())
    for n in sum_l:
        torch.testing.assert_close(sum_b[n], sum_l[n], rtol=rtol, atol=atol)
    for a, b in zip(res_l, res_b):  # per-task results too (the divergence guards read them)
        assert b.query_loss == pytest.approx(a.query_loss, rel=1e-5)
        assert b.support_losses == pytest.approx(a.support_losses, rel=1e-5)
        for n in a.grads:
            torch.testing.assert_close(b.grads[n], a.grads[n], rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def nf4_llama():
    return build_learner(make_config(method="maml", quantization="nf4", **LLAMA), small_llama())


@pytest.mark.parametrize("quantization", [None, "nf4"])
@pytest.mark.parametrize("order", ["second", "first"])
def test_batched_equals_loop_on_llama_with_lora_and_soft_prompt(quantization, order, nf4_llama):
    learner = nf4_llama if quantization else build_learner(make_config(method="maml", **LLAMA), small_llama())
    learner.config.inner.order = order
    family = CopyFamily()
    rng = np.random.default_rng(0)
    episodes = [learner.episode(family.sample("train", rng)) for _ in range(3)]
    assert_same(*both_ways(learner, episodes, "maml"))


def test_batched_pads_different_sequence_lengths():
    learner = build_learner(make_config(method="maml", **LLAMA), small_llama())
    short = Task({"prompt": ["ab="] * 3, "completion": ["abx"] * 3}, {"prompt": ["cd="] * 2, "completion": ["c"] * 2},
                 "generation")
    long = Task({"prompt": ["abcdabcd="] * 3, "completion": ["abcdy"] * 3},
                {"prompt": ["dcba="] * 2, "completion": ["dcbadcba"] * 2}, "generation")
    episodes = [learner.episode(short), learner.episode(long)]
    assert episodes[0].support["input_ids"].shape != episodes[1].support["input_ids"].shape
    assert_same(*both_ways(learner, episodes, "maml"))


@pytest.mark.parametrize("method, extra", [
    ("maml", dict(inner_optimizer="adam")),
    ("maml", dict(order="truncated", truncate=1, checkpoint=True)),
    ("metasgd", dict(per_step=True)),
    ("metasgd", dict()),
    ("anil", dict(trainable=["4."])),
    ("reptile", dict()),
    ("fomaml", dict(lora_plus_ratio=4.0)),
])
def test_batched_equals_loop_on_sinusoid(method, extra):
    learner = build_learner(make_config(method=method, inner_steps=3, inner_lr=0.02, **extra), mlp(dtype=torch.float64))
    rng = np.random.default_rng(1)
    episodes = [learner.episode(sinusoid_task(rng, dtype=torch.float64)) for _ in range(4)]
    assert_same(*both_ways(learner, episodes, method), rtol=1e-9, atol=1e-12)


def sentiment_tasks():
    rows = lambda words, labels: {"text": words, "label": labels}  # noqa: E731
    return [Task(rows(["good", "bad day", "fine", "awful!"], [0, 1, 0, 1]), rows(["great", "bad"], [0, 1]),
                 "classification"),
            Task(rows(["cat", "a dog", "kitten", "puppy"], [1, 0, 1, 0]), rows(["dog", "cats"], [0, 1]),
                 "classification")]


def encoder_learner(model):
    from metalearn.foundation import byte_tokenizer

    config = make_config(method="maml", inner_steps=2, lora_r=2, init_lora_weights="gaussian", head="prototype",
                         model_type="encoder", attn_implementation="eager",
                         target_modules=["q_proj", "v_proj"] if hasattr(model, "layers") else ["query", "value"])
    return build_learner(config, model, byte_tokenizer())


def test_batched_prototype_head_on_encoder_classification():
    from transformers import LlamaModel

    learner = encoder_learner(LlamaModel(small_llama().config))  # the head comes from each task's support set
    assert_same(*both_ways(learner, [learner.episode(t) for t in sentiment_tasks()], "maml"))


class DataDependent(torch.nn.Module):
    """An MLP that branches on its input's values: data-dependent control flow, which vmap refuses."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x) if bool((x > -10).all()) else -self.net(x)


def test_auto_falls_back_loudly_when_the_model_cannot_be_vmapped(caplog):
    learner = build_learner(make_config(method="maml", inner_steps=1), DataDependent())
    rng = np.random.default_rng(4)
    episodes = [learner.episode(sinusoid_task(rng)) for _ in range(2)]
    learner.config.inner.task_batching = "on"
    with pytest.raises(RuntimeError, match="vmap"):
        algorithms.meta_gradient(learner, episodes, "maml")
    learner.config.inner.task_batching = "auto"
    with caplog.at_level(logging.INFO, logger="metalearn"):
        auto = algorithms.meta_gradient(learner, episodes, "maml")
    said = [r for r in caplog.records if "batched step failed" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    learner.config.inner.task_batching = "off"
    assert_same(algorithms.meta_gradient(learner, episodes, "maml"), auto, rtol=0, atol=0)


def test_fallback_is_logged_once_and_on_raises(caplog):
    learner = build_learner(make_config(method="maml", inner_steps=1, inner_clip_norm=1.0), mlp())
    rng = np.random.default_rng(2)
    episodes = [learner.episode(sinusoid_task(rng)) for _ in range(2)]
    learner.config.inner.task_batching = "auto"
    with caplog.at_level(logging.DEBUG, logger="metalearn"):
        for _ in range(2):
            algorithms.meta_gradient(learner, episodes, "maml")
    said = [r for r in caplog.records if "task batching does not apply" in r.getMessage()]
    assert len(said) == 2 and "clip_norm" in said[0].getMessage()
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG]  # loud once, then quiet
    learner.config.inner.task_batching = "on"
    with pytest.raises(ValueError, match="task_batching='on'.*clip_norm"):
        algorithms.meta_gradient(learner, episodes, "maml")
    # different support sizes cannot be stacked
    learner = build_learner(make_config(method="maml", inner_steps=1, task_batching="on"), mlp())
    uneven = [learner.episode(sinusoid_task(rng, k=k)) for k in (5, 10)]
    with pytest.raises(ValueError, match="different numbers of examples|different shapes"):
        algorithms.meta_gradient(learner, uneven, "maml")


def test_batched_second_order_graph_is_at_most_meta_batch_times_the_loops():
    learner = build_learner(make_config(method="maml", **LLAMA), small_llama())
    rng = np.random.default_rng(3)
    episodes = [learner.episode(CopyFamily().sample("train", rng)) for _ in range(3)]
    learner.config.inner.task_batching = "off"
    one_task = saved_bytes_during(lambda: algorithms.meta_gradient(learner, episodes[:1], "maml"))
    learner.config.inner.task_batching = "on"
    batched = saved_bytes_during(lambda: algorithms.meta_gradient(learner, episodes, "maml"))
    assert batched <= len(episodes) * one_task


def test_batched_equals_loop_with_a_support_temperature():
    from transformers import LlamaModel

    from metalearn.foundation import byte_tokenizer

    config = make_config(method="maml", inner_steps=2, lora_r=2, init_lora_weights="gaussian", head="prototype",
                         head_metric="cosine", support_temperature=0.4, model_type="encoder",
                         attn_implementation="eager", target_modules=["q_proj", "v_proj"])
    learner = build_learner(config, LlamaModel(small_llama().config), byte_tokenizer())
    assert_same(*both_ways(learner, [learner.episode(t) for t in sentiment_tasks()], "maml"))
