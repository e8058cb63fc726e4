"""Task batching on BERT-family encoders and SDPA models (masks built vmap-safely), and chunked batching."""
import numpy as np
import pytest
import torch

from benchmarks.common import GraphMemory
from metalearn import algorithms
from metalearn.attention_masks import vmappable_masks
from metalearn.build import build_learner
from metalearn.foundation import byte_tokenizer
from metalearn.tasks import Task
from metalearn.training import make_config
from tests.helpers import CopyFamily, small_bert, small_llama
from tests.test_batched import LLAMA, assert_same, both_ways, sentiment_tasks


def bert_learner(attn: str, order: str, quantization=None):
    """ProtoMAML on a tiny BERT: LoRA on query/value, a 2-token soft prompt, a prototype head."""
    config = make_config(method="maml", order=order, inner_steps=2, inner_lr=0.1, lora_r=2,
                         init_lora_weights="gaussian", prompt_tokens=2, head="prototype", model_type="encoder",
                         attn_implementation=attn, target_modules=["query", "value"], quantization=quantization)
    return build_learner(config, small_bert(), byte_tokenizer())


@pytest.mark.parametrize("attn, order, quantization", [("eager", "second", None), ("sdpa", "first", None),
                                                       ("eager", "first", "nf4")])
def test_batched_equals_loop_on_bert_with_prototype_head(attn, order, quantization):
    learner = bert_learner(attn, order, quantization)
    assert learner.model.module.config._attn_implementation == attn
    episodes = [learner.episode(t) for t in sentiment_tasks()]  # texts of different lengths: padding everywhere
    assert (episodes[0].support["attention_mask"] == 0).any()
    assert_same(*both_ways(learner, episodes, "maml"))


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_batched_equals_loop_on_llama_with_sdpa(quantization):
    learner = build_learner(make_config(method="fomaml", attn_implementation="sdpa", quantization=quantization,
                                        **LLAMA), small_llama())
    assert learner.model.module.config._attn_implementation == "sdpa"
    rng = np.random.default_rng(0)
    episodes = [learner.episode(CopyFamily().sample("train", rng)) for _ in range(2)]
    padded = Task({"prompt": ["abcdabcd="] * 4, "completion": ["abcdy"] * 4},
                  {"prompt": ["dcba="] * 4, "completion": ["dcbadcba"] * 4}, "generation")
    episodes.append(learner.episode(padded))  # longer than the others: the batch pads the rest
    assert_same(*both_ways(learner, episodes, "fomaml"))


def test_vmappable_masks_change_the_registry_only_inside_and_nest():
    from transformers import masking_utils

    registry = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS
    before = {k: registry[k] for k in ("sdpa", "eager")}
    with vmappable_masks():
        inside = {k: registry[k] for k in before}
        assert all(inside[k] is not before[k] for k in before)
        with vmappable_masks():
            assert all(registry[k] is inside[k] for k in before)  # not wrapped twice
        assert all(registry[k] is inside[k] for k in before)
        padding = torch.tensor([[1, 1, 1, 1]], dtype=torch.bool)  # no padding: the shortcut would return None
        mask = registry["sdpa"](batch_size=1, q_length=4, kv_length=4, attention_mask=padding)
        assert mask is not None and mask.shape == (1, 1, 4, 4) and torch.equal(mask[0, 0], torch.ones(4, 4).tril().bool())
    assert {k: registry[k] for k in before} == before


def test_chunked_batching_equals_loop_and_bounds_memory():
    learner = build_learner(make_config(method="maml", **LLAMA), small_llama())
    rng = np.random.default_rng(5)
    episodes = [learner.episode(CopyFamily().sample("train", rng)) for _ in range(4)]
    frozen = list(learner.model.parameters())
    peaks = {}
    for chunk in (None, 2):
        learner.config.inner.task_chunk = chunk
        looped, batched = both_ways(learner, episodes, "maml")
        assert_same(looped, batched)
        with GraphMemory(exclude=frozen) as mem:
            algorithms.meta_gradient(learner, episodes, "maml")
        peaks[chunk] = mem.peak
    assert peaks[2] < 0.7 * peaks[None]  # two tasks' graphs at a time instead of four


def test_task_chunk_is_validated():
    with pytest.raises(ValueError, match="task_chunk"):
        make_config(task_chunk=0)
