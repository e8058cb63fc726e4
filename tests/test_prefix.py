"""Prefix tuning as a meta-learnable set: meta-gradients, NF4, batching, encoders, saving, bad combinations.

The hand-written reference builds the key/value prefix itself (the layout peft documents for
``PrefixTuningConfig``: (tokens, layers * 2 * hidden) -> per layer a key and a value of shape
(batch, heads, tokens, head_dim)), calls the bare GPT-2 with it as its attention cache, computes the
completion NLL by hand and unrolls SGD with ``create_graph``: no peft forward, no metalearn loss or unroll.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metalearn import algorithms
from metalearn.build import build_learner
from metalearn.training import make_config
from tests.helpers import CopyFamily, dequantized_copy, small_gpt2
from tests.test_meta_gradients import directional_fd

PREFIX = dict(method="maml", inner_steps=2, inner_lr=0.05, lora=False, prefix_tokens=3, compute_dtype="float64")
LORA = dict(lora=True, lora_r=2, target_modules=["c_attn"], init_lora_weights="gaussian")


def gpt2_learner(**overrides):
    learner = build_learner(make_config(**{**PREFIX, **overrides}), small_gpt2())
    with torch.no_grad():  # peft draws the prefix from N(0, 1): shrink it to a regime where attention is not saturated
        for name, t in learner.init.items():
            if name.startswith("prompt_encoder."):
                t.mul_(0.3)
    return learner


def prefix_from(params, cfg):
    """The (tokens, layers * 2 * hidden) prefix: the tensor itself, or peft's MLP tanh(E W1' + b1) W2' + b2."""
    p = {n.removeprefix("prompt_encoder.default."): t for n, t in params.items()}
    if not cfg.prefix_projection:
        return p["embedding.weight"]
    hidden = torch.tanh(F.linear(p["embedding.weight"], p["transform.0.weight"], p["transform.0.bias"]))
    return F.linear(hidden, p["transform.2.weight"], p["transform.2.bias"])


def hand_loss(base, params, batch, cfg):
    """Mean over sequences of the completion tokens' mean NLL, with the prefix as GPT-2's attention cache."""
    from transformers import DynamicCache

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n, tokens = ids.shape[0], cfg.num_virtual_tokens
    heads, layers = base.config.n_head, base.config.n_layer
    kv = prefix_from(params, cfg).view(tokens, 2 * layers, heads, -1).permute(1, 2, 0, 3)  # (2L, heads, tokens, dim)
    cache = DynamicCache()
    for layer in range(layers):
        cache.update(kv[2 * layer].expand(n, -1, -1, -1), kv[2 * layer + 1].expand(n, -1, -1, -1), layer)
    full_mask = torch.cat([torch.ones(n, tokens, dtype=mask.dtype), mask], dim=1)
    logits = base(input_ids=ids, attention_mask=full_mask, past_key_values=cache).logits[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (-(logp * keep).sum(1) / keep.sum(1)).mean()


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_meta_gradient_equals_a_hand_written_second_order_loop(projection):
    learner = gpt2_learner(prefix_projection=projection, prefix_hidden=8 if projection else None)
    cfg = learner.adapted.prefix.peft_config["default"]
    base = learner.adapted.prefix.base_model
    episode = learner.episode(CopyFamily().sample("train", np.random.default_rng(0)))
    ours = algorithms.maml.task_gradient(learner, episode)

    init = {n: t.detach().clone().requires_grad_(True) for n, t in learner.init.items()}
    fast = dict(init)
    for _ in range(2):
        loss = hand_loss(base, fast, episode.support, cfg)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {n: t - 0.05 * g for (n, t), g in zip(fast.items(), grads)}
    query = hand_loss(base, fast, episode.query, cfg)
    expected = dict(zip(init, torch.autograd.grad(query, list(init.values()))))

    assert ours.query_loss == pytest.approx(float(query.detach()), rel=1e-10)
    assert set(ours.grads) == set(expected) and len(expected) == (5 if projection else 1)
    for name, g in expected.items():
        assert float(g.abs().sum()) > 0
        torch.testing.assert_close(ours.grads[name], g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("extra", [dict(), dict(LORA, prefix_projection=True, prefix_hidden=8)], ids=["prefix", "lora+mlp"])
def test_prefix_meta_gradient_matches_finite_differences(extra):
    learner = gpt2_learner(**extra)
    episode = learner.episode(CopyFamily().sample("train", np.random.default_rng(1)))
    analytic, numeric = directional_fd(learner, episode)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_prefix_meta_gradient_on_an_encoder_matches_finite_differences():
    from metalearn.foundation import byte_tokenizer
    from tests.helpers import IntentFamily, small_bert

    config = make_config(method="maml", inner_steps=2, inner_lr=0.05, lora_r=2, target_modules=["query", "value"],
                         init_lora_weights="gaussian", prefix_tokens=2, head="prototype", head_temperature=0.5,
                         compute_dtype="float64")
    learner = build_learner(config, small_bert(dtype=torch.float64), tokenizer=byte_tokenizer())
    assert learner.model.n_virtual_tokens == 0  # a prefix adds no output positions to drop
    episode = learner.episode(IntentFamily().sample("train", np.random.default_rng(0)))
    grads = algorithms.maml.task_gradient(learner, episode).grads
    assert float(grads["prompt_encoder.default.embedding.weight"].abs().sum()) > 0
    analytic, numeric = directional_fd(learner, episode)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


# ---------------------------------------------------------------- NF4, batching, encoders

LLAMA_LORA = dict(lora_r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")
LLAMA = dict(method="maml", inner_steps=2, inner_lr=0.05, prefix_tokens=2)


@pytest.mark.parametrize("extra", [dict(lora=False), dict(LLAMA_LORA, prefix_projection=True, prefix_hidden=8)],
                         ids=["prefix", "lora+mlp"])
def test_prefix_second_order_through_nf4_equals_fp32_on_dequantized_weights(extra):
    from tests.helpers import small_llama

    kwargs = dict(LLAMA, **extra)
    torch.manual_seed(0)
    nf4 = build_learner(make_config(quantization="nf4", **kwargs), small_llama())
    inner = nf4.adapted.lora.base_model.model if nf4.adapted.lora is not None else nf4.adapted.prefix.base_model
    fp32 = build_learner(make_config(**kwargs), dequantized_copy(inner, small_llama()))
    with torch.no_grad():  # the same starting adapters
        for name in nf4.init:
            fp32.init[name].copy_(nf4.init[name])
    task = CopyFamily().sample("train", np.random.default_rng(0))
    g_nf4 = algorithms.maml.task_gradient(nf4, nf4.episode(task))
    g_fp32 = algorithms.maml.task_gradient(fp32, fp32.episode(task))
    assert g_nf4.query_loss == pytest.approx(g_fp32.query_loss, rel=1e-5)
    assert any("prompt_encoder" in n for n in g_nf4.grads)
    for name in g_nf4.grads:
        assert float(g_fp32.grads[name].abs().sum()) > 0, name
        torch.testing.assert_close(g_nf4.grads[name], g_fp32.grads[name], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("quantization", [None, "nf4"])
@pytest.mark.parametrize("order", ["second", "first"])
def test_prefix_batched_equals_loop_on_llama(quantization, order):
    from tests.helpers import small_llama
    from tests.test_batched import assert_same, both_ways

    learner = build_learner(make_config(quantization=quantization, **LLAMA, **LLAMA_LORA), small_llama())
    learner.config.inner.order = order
    rng = np.random.default_rng(0)
    episodes = [learner.episode(CopyFamily().sample("train", rng)) for _ in range(3)]
    assert_same(*both_ways(learner, episodes, "maml"))


def test_prefix_batched_equals_loop_on_an_encoder_with_a_prototype_head():
    from transformers import LlamaModel

    from metalearn.foundation import byte_tokenizer
    from tests.helpers import small_llama
    from tests.test_batched import assert_same, both_ways, sentiment_tasks

    config = make_config(method="maml", inner_steps=2, lora=False, prefix_tokens=2, prefix_projection=True,
                         head="prototype", model_type="encoder", attn_implementation="eager")
    learner = build_learner(config, LlamaModel(small_llama().config), byte_tokenizer())
    assert_same(*both_ways(learner, [learner.episode(t) for t in sentiment_tasks()], "maml"))


# ---------------------------------------------------------------- saving, loading, generation

@pytest.mark.parametrize("extra, folder", [
    (dict(lora=False), ""),
    (dict(LLAMA_LORA), "prefix"),
    (dict(LLAMA_LORA, prefix_projection=True, prefix_hidden=8), "prefix"),
], ids=["prefix", "lora+prefix", "lora+mlp"])
def test_saved_prefix_reloads_through_peft_and_metalearn_load(tmp_path, extra, folder):
    import json
    import os

    import metalearn
    from metalearn.adapters import Adapted, load_adapters
    from metalearn.generate import greedy
    from metalearn.model import TaskModel
    from tests.helpers import small_llama

    learner = build_learner(make_config(**LLAMA, **extra), small_llama())
    with torch.no_grad():  # move the init away from peft's own initialization
        for t in learner.init.values():
            t.add_(0.05 * torch.randn_like(t))
    task = CopyFamily().sample("test", np.random.default_rng(0))
    query = learner.episode(task).query
    with torch.no_grad():
        expected = float(learner.loss(learner.init, query, "generation"))
    path = str(tmp_path / "init")
    learner.save(path)
    with open(os.path.join(path, folder, "adapter_config.json")) as f:
        assert json.load(f)["peft_type"] == "PREFIX_TUNING"
    assert os.path.exists(os.path.join(path, "adapter_config.json"))  # LoRA (or the lone prefix) at the root

    peft_model = load_adapters(small_llama(), path)  # plain peft, no metalearn state
    plain = TaskModel(peft_model, "causal", learner.model.tokenizer)
    with torch.no_grad():
        assert float(plain(plain.encode(task.query, "generation"))) == pytest.approx(expected, rel=1e-6)
    prompts = list(task.query["prompt"])
    assert greedy(plain, Adapted(peft_model, None, None, ()), {}, prompts, 4) == \
        greedy(learner.model, learner.adapted, learner.init, prompts, 4)

    reloaded = metalearn.load(path, model=small_llama())
    for name in learner.init:
        torch.testing.assert_close(reloaded.init[name], learner.init[name].detach())
    assert learner.adapt(task.support, steps=2).loss(task.query) == \
        pytest.approx(reloaded.adapt(task.support, steps=2).loss(task.query), rel=1e-6)


# ---------------------------------------------------------------- bad combinations, baselines

def test_a_soft_prompt_and_a_prefix_together_raise_naming_the_alternative():
    with pytest.raises(ValueError, match=r"prompt_tokens=2 with prefix_tokens=3 is invalid: peft holds one "
                                         r"prompt-learning method.*prefix_tokens=3 with LoRA.*prompt_tokens=2 with LoRA"):
        make_config(prompt_tokens=2, prefix_tokens=3)
    with pytest.raises(ValueError, match="prefix_projection=True is invalid: .*set prefix_tokens > 0"):
        make_config(prefix_projection=True)
    with pytest.raises(ValueError, match="prefix_hidden=8 is invalid: .*prefix_projection=True"):
        make_config(prefix_tokens=2, prefix_hidden=8)
    with pytest.raises(ValueError, match="prefix_tokens=-1 is invalid"):
        make_config(prefix_tokens=-1)
    with pytest.raises(ValueError, match="prefix_init='ones' is invalid: use None .* or 'zero'"):
        make_config(prefix_tokens=2, prefix_init="ones")
    from tests.helpers import mlp

    with pytest.raises(ValueError, match="prefix_tokens > 0 needs a transformers model"):
        build_learner(make_config(prefix_tokens=2), mlp())
    from transformers import AutoModelForSeq2SeqLM, T5Config

    t5 = AutoModelForSeq2SeqLM.from_config(T5Config(vocab_size=128, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                    num_heads=2, decoder_start_token_id=0))
    with pytest.raises(ValueError, match="encoder-decoder model: .*decoder only.*use prompt_tokens and/or LoRA"):
        build_learner(make_config(prefix_tokens=2, lora=False), t5)


def test_random_init_baseline_redraws_the_prefix_and_its_mlp():
    from metalearn.adapters import adaptable_params, write_params
    from metalearn.views import random_init
    from tests.helpers import small_llama

    learner = build_learner(make_config(**LLAMA, lora=False, prefix_projection=True), small_llama())
    before = {n: t.detach().clone() for n, t in adaptable_params(learner.adapted).items()}
    fresh = random_init(learner, seed=1)
    assert set(fresh.init) == set(learner.init) and len(fresh.init) == 5
    for name, value in fresh.init.items():
        assert not torch.equal(value, learner.init[name]), name  # re-drawn
        torch.testing.assert_close(adaptable_params(learner.adapted)[name].detach(), before[name])  # module restored
    zero = build_learner(make_config(**LLAMA, lora=False, prefix_init="zero"), small_llama())
    (name,) = zero.init
    with torch.no_grad():
        zero.init[name].add_(1.0)  # a meta-learned value, away from the init, also in the module
    write_params(zero.adapted, zero.init)
    assert float(random_init(zero, seed=1).init[name].detach().abs().max()) == 0.0  # peft's "zero" init, re-drawn as such
