"""The forgetting guard picks on validation data, and transfer targets must be held out."""
import pytest
import torch

from metalearn.base import byte_tokenizer
from metalearn.build import build_learner
from metalearn.eval import guard
from metalearn.fit import make_config
from metalearn.tasks import NWayKShot
from tests.helpers import CopyFamily, IntentFamily, small_bert, small_llama


def llama_learner(**kw):
    config = make_config(method="fomaml", inner_steps=1, lora_r=2, target_modules=["q_proj", "v_proj"],
                         prompt_tokens=2, **kw)
    return build_learner(config, small_llama())


def encoder_learner(**kw):
    config = make_config(method="fomaml", inner_steps=1, lora_r=2, target_modules=["query", "value"],
                         head="prototype", **kw)
    return build_learner(config, small_bert(), tokenizer=byte_tokenizer())


def test_guard_keeps_the_init_where_it_helps_and_the_foundation_where_it_hurts():
    helpful = encoder_learner()  # LoRA B = 0: the foundation's features; one step on the prototype head helps
    choice = guard.choose(helpful, IntentFamily(), steps=1, episodes=6, metric="nll")
    assert choice["use"] == "meta" and choice["val"]["meta"] < choice["val"]["foundation"]
    damaged = llama_learner(init_lora_weights="gaussian")
    with torch.no_grad():
        for t in damaged.init.values():
            t.copy_(torch.randn_like(t) * 3.0)  # adapters that scramble the model
    choice = guard.choose(damaged, CopyFamily(), episodes=4, metric="nll")
    assert choice["use"] == "foundation" and choice["val"]["foundation"] < choice["val"]["meta"]


def test_transfer_target_overlapping_meta_training_classes_is_refused():
    rows = {"text": [f"t{i}" for i in range(40)], "label": [f"c{i % 8}" for i in range(40)]}
    source = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.5, 0.25, 0.25), seed=0)
    same_classes = NWayKShot(rows, n_way=2, k_shot=1, q_query=1, splits=(0.25, 0.25, 0.5), seed=1)
    with pytest.raises(ValueError, match="not held out: its test classes"):
        guard.check_held_out(source, same_classes)
    guard.check_held_out(source, source)  # its own test split is held out
    with pytest.raises(ValueError, match="margin"):
        guard.choose(encoder_learner(), IntentFamily(), margin=-1)
