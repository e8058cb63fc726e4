"""Bounded memory: what a meta-step's graph holds, vs inner steps and vs meta-batch; the base is never copied."""
import numpy as np
import pytest
import torch

from benchmarks.common import GraphMemory
from metalearn import algorithms
from metalearn.build import build_learner
from metalearn.training import make_config
from tests.helpers import CopyFamily, small_llama

ADAPTER = dict(lora_r=2, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")


@pytest.fixture(scope="module")
def base():
    return small_llama().requires_grad_(False)  # frozen, as build_learner leaves a base


def graph_peak(method, steps, tasks=1, batching="off", **inner):
    base = small_llama()  # adapters attach in place: each learner gets a base of its own
    learner = build_learner(make_config(method=method, inner_steps=steps, task_batching=batching, **ADAPTER, **inner),
                            base)
    rng = np.random.default_rng(0)
    family = CopyFamily()
    episodes = [learner.episode(family.sample("train", rng)) for _ in range(tasks)]
    frozen = list(base.parameters())
    ptrs = [p.data_ptr() for p in frozen]
    with GraphMemory(exclude=frozen) as mem:
        algorithms.meta_gradient(learner, episodes, method)
    assert [p.data_ptr() for p in frozen] == ptrs  # the frozen base is used in place, never copied
    return mem.peak


def test_second_order_grows_with_inner_steps_first_order_and_reptile_stay_flat():
    peak = {(m, k): graph_peak(m, k) for m in ("maml", "fomaml", "reptile") for k in (1, 4)}
    assert peak[("maml", 4)] > 2.5 * peak[("maml", 1)]
    assert peak[("fomaml", 4)] <= 1.1 * peak[("fomaml", 1)]
    assert peak[("reptile", 4)] <= 1.1 * peak[("reptile", 1)]
    # truncation to the last step keeps second order at one step's graph
    assert graph_peak("maml", 4, order="truncated", truncate=1) <= 1.1 * peak[("maml", 1)]


def test_loop_peak_does_not_grow_with_meta_batch_batched_is_at_most_linear():
    one = graph_peak("maml", 2, tasks=1)
    assert graph_peak("maml", 2, tasks=4) <= 1.1 * one  # one task's graph at a time
    batched = graph_peak("maml", 2, tasks=4, batching="on")
    assert one < batched <= 4 * one * 1.05


def test_graph_memory_excludes_the_frozen_weights_and_counts_each_storage_once(base):
    x = torch.randn(3, 32, requires_grad=True)
    weight = base.lm_head.weight  # frozen: autograd saves it for x's gradient, but it exists anyway
    with GraphMemory(exclude=[weight]) as mem:
        y = torch.nn.functional.linear(x, weight)
        assert mem.peak == 0
        z = x * x  # saves x twice: one storage
    assert mem.peak == x.numel() * x.element_size()
    del y, z
