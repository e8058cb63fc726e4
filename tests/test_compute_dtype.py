"""QLoRA's bfloat16 compute dtype: the NF4 layers multiply in bfloat16, everything else stays float32.

``compute_dtype="bfloat16"`` is what the examples and the evaluation benchmark use where the CPU runs
bfloat16 natively (about 5x the float32 matmul rate with AVX512-BF16). These tests check that it computes
what bitsandbytes' own bfloat16 layers compute, that its meta-gradient (second order, through the
dequantized bfloat16 weights) stays the float32 one up to bfloat16 rounding, that the frozen weights are
cached in bfloat16, and that asking for it on a CPU that would emulate it gives a clear warning.
"""
import logging

import numpy as np
import pytest
import torch

from metalearn import algorithms, foundation
from metalearn.build import build_learner
from metalearn.quant import is_linear4bit, linear4bit_forward, transformable_4bit
from metalearn.training import make_config
from tests.helpers import IntentFamily
from tests.test_cpu_layout import bert64, twin_of

CONFIG = dict(method="maml", inner_steps=2, inner_lr=0.05, lora_r=4, target_modules=["query", "value"],
              init_lora_weights="gaussian", head="prototype", prompt_tokens=2)


def bf16_learner():
    return build_learner(make_config(quantization="nf4", compute_dtype="bfloat16", **CONFIG), bert64(),
                         tokenizer=foundation.byte_tokenizer())


def test_bf16_nf4_layers_compute_what_bitsandbytes_computes_and_cache_bf16_weights():
    learner = bf16_learner()
    layers = [m for m in learner.model.modules() if is_linear4bit(m)]
    assert layers and all(m.compute_dtype == torch.bfloat16 for m in layers)
    task = IntentFamily().sample("test", np.random.default_rng(0))
    episode = learner.episode(task)
    with torch.no_grad():
        params = learner.start_params(episode)
        theirs = learner.loss(params, episode.query, episode.kind)  # bitsandbytes' own Linear4bit.forward
        with transformable_4bit(learner.model):  # metalearn's path (evaluation, batched meta-steps)
            ours = learner.loss(params, episode.query, episode.kind)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-3)
    store: dict = {}
    out = linear4bit_forward(layers[0], store)(torch.randn(3, layers[0].in_features))
    weights = [v for k, v in store.items() if k != "bytes"]
    assert out.dtype == torch.float32 and [w.dtype for w in weights] == [torch.bfloat16]


def test_bf16_meta_gradient_is_the_fp32_twins_up_to_bf16_rounding():
    learner = bf16_learner()
    twin = twin_of(learner, bert64, **CONFIG)  # float32 products on the same dequantized weights
    task = IntentFamily().sample("test", np.random.default_rng(1))
    ours = algorithms.maml.task_gradient(learner, learner.episode(task)).grads
    theirs = algorithms.maml.task_gradient(twin, twin.episode(task)).grads
    for name in theirs:
        a, b = ours[name].flatten().double(), theirs[name].flatten().double()
        assert torch.isfinite(a).all(), name
        assert not torch.equal(a, b), f"{name}: bfloat16 was not used"
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        assert cosine > 0.99 and (a.norm() / b.norm()).item() == pytest.approx(1.0, abs=0.05), (name, cosine)


def test_bf16_on_a_cpu_without_native_bf16_warns_with_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(foundation, "native_bf16", lambda: False)
    assert foundation.fast_compute_dtype() == "float32"
    with caplog.at_level(logging.WARNING, logger="metalearn"):
        bf16_learner()
    assert "compute_dtype='float32'" in caplog.text and "AVX512-BF16" in caplog.text
    monkeypatch.setattr(foundation, "native_bf16", lambda: True)
    assert foundation.fast_compute_dtype() == "bfloat16"
