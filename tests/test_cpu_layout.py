"""One 4-bit layout on every CPU: bitsandbytes' AVX512-BF16 repacking never changes the weights metalearn uses.

conftest forces the AVX512-BF16 branch on for every 4-bit layer, so these tests exercise it on any CPU.
After each public entry point (fit with its double-backward probe and validation, adapt, predict, evaluate,
save and load) no layer is repacked, the bytes are the ones quantization wrote, and the predictions and
meta-gradients equal those of an fp32 twin holding the dequantized weights.
"""
import copy

import numpy as np
import pytest
import torch

import metalearn
from metalearn import algorithms
from metalearn.build import build_learner
from metalearn.config import BaseConfig
from metalearn.foundation import byte_tokenizer, load_base, tiny_llama
from metalearn.quant import is_cpu_packed, is_linear4bit, keep_standard_layout
from metalearn.training import make_config
from tests.helpers import CopyFamily, IntentFamily, dequantized_copy

bnb = pytest.importorskip("bitsandbytes")  # a hard dependency of metalearn: never skipped in practice


def llama64():
    """Wide enough (in_features >= 64) for bitsandbytes to repack, narrow enough to be fast."""
    return tiny_llama(vocab_size=128, hidden_size=64, layers=2, heads=2, seed=0)


def bert64():
    from transformers import AutoModel, BertConfig

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, pad_token_id=0)
    return AutoModel.from_config(cfg, attn_implementation="eager")


def quantized_layers(model):
    return {name.removesuffix(".base_layer"): m for name, m in model.named_modules() if is_linear4bit(m)}


def assert_standard_layout(model, reference):
    """No layer repacked, and the bytes and absmax are the ones a fresh quantization writes."""
    theirs = quantized_layers(reference)
    ours = {next(k for k in theirs if ("." + name).endswith("." + k)): m for name, m in quantized_layers(model).items()}
    assert ours and set(ours) == set(theirs)
    for name, layer in ours.items():
        assert not is_cpu_packed(layer), f"{name} was repacked"
        assert torch.equal(layer.weight.data, theirs[name].weight.data), name
        torch.testing.assert_close(bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state),
                                   bnb.functional.dequantize_4bit(theirs[name].weight.data,
                                                                  theirs[name].weight.quant_state),
                                   rtol=0, atol=0)


def fresh_nf4(make_model):
    base, _ = load_base(BaseConfig(quantization="nf4"), make_model())
    return base


def twin_of(learner, make_model, **config):
    """An fp32 learner on the dequantized weights, with the same initialization."""
    twin = build_learner(make_config(**config), dequantized_copy(fresh_nf4(make_model), make_model()),
                         tokenizer=learner.model.tokenizer)
    with torch.no_grad():
        for name, value in learner.init.items():
            twin.init[name].copy_(value)
        for name, value in learner.step_sizes.items():
            twin.step_sizes[name].copy_(value)
    return twin


@pytest.mark.parametrize("nested", [False, True])
def test_forced_capability_repacks_a_bare_layer_and_is_read_back_exactly(nested):
    """The forcing works (a bare bitsandbytes layer is repacked), and packed bytes are read back losslessly."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(128, 64, bias=False, compress_statistics=nested, quant_type="nf4",
                              compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(0.05 * torch.randn(64, 128), requires_grad=False, compress_statistics=nested,
                                     quant_type="nf4", module=layer)
    layer = layer.to("cpu").eval()
    state = layer.weight.quant_state
    absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset if nested else state.absmax
    bf16_state = copy.copy(state)  # the packed kernel computes with a bfloat16 absmax
    bf16_state.nested, bf16_state.absmax = False, absmax.bfloat16().float()
    expected = bnb.functional.dequantize_4bit(layer.weight.data, bf16_state)
    assert layer.support_avx512bf16_for_cpu
    try:
        with torch.no_grad():
            layer(torch.randn(2, 128))
    except Exception:  # the packed kernel may be missing on a CPU without AVX512-BF16: the repack came first
        pass
    assert is_cpu_packed(layer)
    with pytest.raises(RuntimeError, match="keep_standard_layout"):
        from metalearn.quant import Frozen4bit
        Frozen4bit(layer, None).weight(torch.float32)
    assert keep_standard_layout(torch.nn.Sequential(layer)) == 1
    assert not is_cpu_packed(layer) and not layer.support_avx512bf16_for_cpu
    torch.testing.assert_close(bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state), expected,
                               rtol=0, atol=0)
    x = torch.randn(3, 128)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ expected.t())
    assert not is_cpu_packed(layer)


def test_every_entry_point_keeps_nf4_equal_to_its_fp32_twin(tmp_path):
    config = dict(method="maml", inner_steps=2, inner_lr=0.05, lora_r=4, target_modules=["q_proj", "v_proj"],
                  init_lora_weights="gaussian", prompt_tokens=2)
    reference = fresh_nf4(llama64)
    family = CopyFamily()
    # fit: the double-backward probe, two meta-steps and a validation pass, all on the NF4 base
    learner = metalearn.fit(family, model=llama64(), quantization="nf4", meta_steps=2, meta_batch=2, eval_every=1,
                            eval_tasks=1, progress=False, output_dir=str(tmp_path / "run"), **config)
    assert_standard_layout(learner.model, reference)
    twin = twin_of(learner, llama64, **config)
    task = family.sample("test", np.random.default_rng(0))

    nf4_adapted, twin_adapted = learner.adapt(task.support, steps=2), twin.adapt(task.support, steps=2)
    assert_standard_layout(learner.model, reference)
    assert nf4_adapted.loss(task.query) == pytest.approx(twin_adapted.loss(task.query), rel=1e-4)
    assert nf4_adapted.predict(task.query, max_new_tokens=4) == twin_adapted.predict(task.query, max_new_tokens=4)
    assert_standard_layout(learner.model, reference)

    g_nf4 = algorithms.maml.task_gradient(learner, learner.episode(task))
    g_twin = algorithms.maml.task_gradient(twin, twin.episode(task))
    for name in g_nf4.grads:
        torch.testing.assert_close(g_nf4.grads[name], g_twin.grads[name], rtol=2e-4, atol=1e-6)

    kwargs = dict(baselines=["zero_shot"], steps=[0, 1], episodes=2, lr_grid=None, progress=False,
                  max_new_tokens=4)
    ours = metalearn.evaluate({"m": learner}, family, **kwargs)
    theirs = metalearn.evaluate({"m": twin}, family, **kwargs)
    assert_standard_layout(learner.model, reference)
    assert ours.table(seconds=False) == theirs.table(seconds=False)  # the scores; seconds differ per run

    learner.save(str(tmp_path / "init"))
    reloaded = metalearn.load(str(tmp_path / "init"), model=llama64())
    assert_standard_layout(learner.model, reference)
    assert_standard_layout(reloaded.model, reference)
    assert reloaded.adapt(task.support, steps=2).loss(task.query) == pytest.approx(twin_adapted.loss(task.query),
                                                                                  rel=1e-4)
    assert_standard_layout(reloaded.model, reference)


def test_saved_nf4_encoder_reloads_and_adapts_like_its_twin(tmp_path):
    """ProtoMAML on a BERT encoder: save, load, adapt and predict in NF4 equal the fp32 twin."""
    config = dict(method="maml", inner_steps=1, inner_lr=0.05, lora_r=4, target_modules=["query", "value"],
                  init_lora_weights="gaussian", head="prototype")
    learner = build_learner(make_config(quantization="nf4", **config), bert64(), tokenizer=byte_tokenizer())
    learner.save(str(tmp_path / "init"))
    reloaded = metalearn.load(str(tmp_path / "init"), model=bert64(), tokenizer=byte_tokenizer())
    reference = fresh_nf4(bert64)
    twin = twin_of(reloaded, bert64, **config)
    task = IntentFamily().sample("test", np.random.default_rng(0))
    ours, theirs = reloaded.adapt(task.support, steps=1), twin.adapt(task.support, steps=1)
    assert ours.loss(task.query) == pytest.approx(theirs.loss(task.query), rel=1e-4)
    assert torch.equal(torch.as_tensor(ours.predict(task.query)), torch.as_tensor(theirs.predict(task.query)))
    assert_standard_layout(reloaded.model, reference)


def test_narrow_nf4_layers_run_on_the_forced_path():
    """in_features < 64 crashed bitsandbytes' repacking ("shape '[32, 0]' is invalid")."""
    from tests.helpers import small_llama

    learner = build_learner(make_config(method="maml", inner_steps=1, lora_r=2, target_modules=["q_proj"],
                                        quantization="nf4"), small_llama())
    task = CopyFamily().sample("test", np.random.default_rng(0))
    assert learner.adapt(task.support, steps=1).predict(task.query, max_new_tokens=2)
    assert not any(is_cpu_packed(m) for m in quantized_layers(learner.model).values())
