"""Greedy decoding is the step-by-step argmax of the training forward, for every meta-learnable set.

The reference decodes one prompt at a time (no padding, no cache) with the same peft forward that
training differentiates; ``greedy`` batches prompts of different lengths (left padding and KV cache
for LoRA, right padding and full forwards for a soft prompt or prefix). On GPT-2's absolute positions
a padding or position mistake changes the tokens.
"""
import pytest
import torch

from metalearn.adapters import write_params
from metalearn.build import build_learner
from metalearn.generate import greedy
from metalearn.training import make_config
from tests.helpers import small_gpt2

LORA = dict(lora_r=2, target_modules=["c_attn"], init_lora_weights="gaussian")
SETS = {"lora": dict(LORA), "prompt": dict(lora=False, prompt_tokens=3), "prefix": dict(lora=False, prefix_tokens=3),
        "lora+prompt": dict(LORA, prompt_tokens=3), "lora+prefix": dict(LORA, prefix_tokens=3, prefix_projection=True)}
PROMPTS = ["abc=", "hello wo", "x="]


def one_at_a_time(learner, prompt, max_new_tokens):
    model, tok = learner.model, learner.model.tokenizer
    ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    new = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model.module(input_ids=x, attention_mask=torch.ones_like(x)).logits  # (1, virtual + seq, vocab)
        token = int(logits[0, -1].argmax())
        if token == tok.eos_token_id:
            break
        ids.append(token)
        new.append(token)
    return tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("name", list(SETS))
def test_greedy_is_the_step_by_step_argmax_of_the_training_forward(name):
    learner = build_learner(make_config(method="fomaml", inner_steps=1, **SETS[name]), small_gpt2(dtype=torch.float32))
    with torch.no_grad():  # adapters far from peft's init, so that they change the tokens
        for t in learner.init.values():
            t.add_(0.5 * torch.randn_like(t, generator=torch.Generator().manual_seed(0)))
    out = greedy(learner.model, learner.adapted, learner.init, PROMPTS, 6)
    write_params(learner.adapted, learner.init)
    assert out == [one_at_a_time(learner, p, 6) for p in PROMPTS]
    assert any(out)
    base = learner.adapted.soft.base_model if learner.adapted.soft is not None else None
    if base is not None:  # the soft prompt or prefix matters: the bare model decodes something else
        without = greedy(learner.model.__class__(base, "causal", learner.model.tokenizer), learner.adapted, {}, PROMPTS, 6)
        assert without != out
