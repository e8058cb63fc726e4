"""Meta-gradients are right: finite differences, higher, NF4 vs dequantized fp32, first order, Reptile."""
import numpy as np
import pytest
import torch

import metalearn
from metalearn import algorithms
from metalearn.build import build_learner
from metalearn.training import make_config
from tests.helpers import (
    CopyFamily,
    Quadratic,
    dequantized_copy,
    mlp,
    saved_bytes_during,
    sinusoid_task,
    small_gpt2,
    small_llama,
)


def meta_loss(learner, episode, init):
    fast, _ = learner.inner_adapt(episode, init=init)
    return learner.loss(fast, episode.query, episode.kind)


def directional_fd(learner, episode, eps=1e-6, seed=0):
    """Central finite difference of the meta-loss along a random direction vs the analytic meta-gradient."""
    torch.manual_seed(seed)
    init = learner.init
    direction = {n: torch.randn_like(t) for n, t in init.items()}
    grads = algorithms.maml.task_gradient(learner, episode).grads
    analytic = sum((grads[n] * direction[n]).sum() for n in init)
    with torch.enable_grad():
        plus = meta_loss(learner, episode, {n: (t + eps * direction[n]).detach().requires_grad_() for n, t in init.items()})
        minus = meta_loss(learner, episode, {n: (t - eps * direction[n]).detach().requires_grad_() for n, t in init.items()})
    return float(analytic), float((plus - minus).detach() / (2 * eps))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_second_order_matches_finite_differences_on_tiny_transformer(optimizer):
    # Adam's g / sqrt(v) is nearly sign(g): its curvature explodes where |g| ~ eps, so finite differences
    # need a smooth regime (eps = 0.1); the arithmetic checked is the same.
    config = make_config(method="maml", inner_steps=2, inner_lr=0.05, inner_optimizer=optimizer, adam_eps=0.1, lora_r=2,
                         target_modules=["c_attn"], init_lora_weights="gaussian", prompt_tokens=2,
                         compute_dtype="float64")
    learner = build_learner(config, small_gpt2())
    episode = learner.episode(CopyFamily().sample("train", np.random.default_rng(0)))
    assert all(t.dtype == torch.float64 for t in learner.init.values())
    analytic, numeric = directional_fd(learner, episode)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_meta_sgd_step_size_gradient_matches_finite_differences():
    config = make_config(method="metasgd", inner_steps=2, inner_lr=0.01, per_step=True)
    learner = build_learner(config, mlp(dtype=torch.float64))
    episode = learner.episode(sinusoid_task(np.random.default_rng(1), dtype=torch.float64))
    grads = algorithms.maml.task_gradient(learner, episode).grads
    name = "2.weight"
    eps = 1e-6
    sizes = learner.step_sizes[name]
    with torch.no_grad():
        sizes[1] += eps
    plus = meta_loss(learner, episode, None).item()
    with torch.no_grad():
        sizes[1] -= 2 * eps
    minus = meta_loss(learner, episode, None).item()
    assert float(grads["lr:" + name][1]) == pytest.approx((plus - minus) / (2 * eps), rel=1e-5)


@pytest.mark.parametrize("order", ["second", "first"])
def test_meta_gradient_equals_higher_on_mlp(order):
    method = "maml" if order == "second" else "fomaml"
    ours = build_learner(make_config(method=method, inner_steps=3, inner_lr=0.02), mlp())
    theirs = build_learner(make_config(method=method, inner_steps=3, inner_lr=0.02, backend="higher"), mlp())
    task = sinusoid_task(np.random.default_rng(3))
    g_ours = algorithms.get(method)(ours, ours.episode(task)).grads
    g_theirs = algorithms.get(method, "higher")(theirs, theirs.episode(task)).grads
    assert set(g_ours) == set(g_theirs)
    for name in g_ours:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-5, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in g_ours.values())


def test_second_order_through_nf4_equals_fp32_on_dequantized_weights():
    kwargs = dict(method="maml", inner_steps=2, inner_lr=0.05, lora_r=4, target_modules=["q_proj", "v_proj"],
                  init_lora_weights="gaussian", prompt_tokens=2)
    torch.manual_seed(0)
    nf4 = build_learner(make_config(quantization="nf4", **kwargs), small_llama())
    torch.manual_seed(0)
    fp32_base = dequantized_copy(nf4.adapted.lora.base_model.model, small_llama())
    fp32 = build_learner(make_config(**kwargs), fp32_base)
    for name in nf4.init:  # same starting adapters
        with torch.no_grad():
            fp32.init[name].copy_(nf4.init[name])
    task = CopyFamily().sample("train", np.random.default_rng(0))
    g_nf4 = algorithms.maml.task_gradient(nf4, nf4.episode(task))
    g_fp32 = algorithms.maml.task_gradient(fp32, fp32.episode(task))
    assert g_nf4.query_loss == pytest.approx(g_fp32.query_loss, rel=1e-5)
    for name in g_nf4.grads:
        torch.testing.assert_close(g_nf4.grads[name], g_fp32.grads[name], rtol=2e-4, atol=1e-6)


class FusedAttentionRegressor(torch.nn.Module):
    """A regressor through SDPA's fused CPU kernel, whose backward has no derivative (no double backward)."""

    def __init__(self):
        super().__init__()
        self.embed, self.out = torch.nn.Linear(1, 4 * 8), torch.nn.Linear(8, 1)

    def forward(self, x):
        tokens = self.embed(x).view(-1, 1, 4, 8)  # (batch, heads=1, seq=4, dim=8)
        mixed = torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens, is_causal=True)
        return self.out(mixed.mean(2).squeeze(1))


def test_first_order_builds_no_second_order_graph():
    task = sinusoid_task(np.random.default_rng(0))
    # a model with no double backward: first order must still work (it never differentiates a gradient)
    first = build_learner(make_config(method="fomaml", inner_steps=3), FusedAttentionRegressor())
    result = algorithms.maml.task_gradient(first, first.episode(task))
    assert all(torch.isfinite(g).all() for g in result.grads.values())
    # FOMAML's meta-gradient is the query gradient at the adapted parameters
    episode = first.episode(task)
    fast, _ = first.inner_adapt(episode)
    fast = {n: t.detach().requires_grad_() for n, t in fast.items()}
    expected = torch.autograd.grad(first.loss(fast, episode.query, "regression"), list(fast.values()))
    for (name, g), e in zip(result.grads.items(), expected):
        torch.testing.assert_close(g, e)
    # and it is cheaper: less saved for backward than second order on the same model and task
    second = build_learner(make_config(method="maml", inner_steps=3), mlp())
    fo = build_learner(make_config(method="fomaml", inner_steps=3), mlp())
    so_bytes = saved_bytes_during(lambda: algorithms.maml.task_gradient(second, second.episode(task)))
    fo_bytes = saved_bytes_during(lambda: algorithms.maml.task_gradient(fo, fo.episode(task)))
    assert fo_bytes < 0.7 * so_bytes


def test_truncated_unroll_interpolates_between_first_and_second_order():
    task = sinusoid_task(np.random.default_rng(4), dtype=torch.float64)
    grads = {}
    for name, kwargs in {"first": dict(method="fomaml"), "second": dict(method="maml"),
                         "trunc_all": dict(method="maml", order="truncated", truncate=3),
                         "trunc_1": dict(method="maml", order="truncated", truncate=1)}.items():
        learner = build_learner(make_config(inner_steps=3, inner_lr=0.05, **kwargs), mlp(dtype=torch.float64))
        grads[name] = algorithms.maml.task_gradient(learner, learner.episode(task)).grads
    for n in grads["second"]:
        torch.testing.assert_close(grads["trunc_all"][n], grads["second"][n])
    diff = lambda a, b: sum(float((grads[a][n] - grads[b][n]).abs().sum()) for n in grads[a])  # noqa: E731
    assert diff("trunc_1", "second") > 0 and diff("trunc_1", "first") > 0


def test_checkpointed_inner_steps_give_the_same_meta_gradient():
    task = sinusoid_task(np.random.default_rng(5), dtype=torch.float64)
    out = []
    for checkpoint in (False, True):
        learner = build_learner(make_config(method="maml", inner_steps=3, checkpoint=checkpoint), mlp(dtype=torch.float64))
        out.append(algorithms.maml.task_gradient(learner, learner.episode(task)).grads)
    for n in out[0]:
        torch.testing.assert_close(out[0][n], out[1][n])


def test_reptile_update_matches_closed_form_on_quadratic():
    d, alpha, k, eps = 3, 0.1, 4, 0.5
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    centers = [torch.tensor(c, dtype=torch.float64) for c in ([0.0, 0.0, 0.0], [2.0, 1.0, -1.0])]

    class Family:
        kind = "regression"
        i = 0

        def sample(self, split, rng):
            c = centers[Family.i % 2]
            Family.i += 1
            x = torch.zeros(2, 1, dtype=torch.float64)
            return metalearn.tasks.Task({"x": x, "y": c.expand(2, d)}, {"x": x, "y": c.expand(2, d)}, "regression")

    learner = metalearn.fit(Family(), model=Quadratic(theta0), method="reptile", inner_steps=k, inner_lr=alpha,
                            meta_batch=2, meta_steps=1, meta_lr=eps, outer_optimizer="sgd", outer_clip_norm=None,
                            progress=False)
    beta = 2 * alpha / d  # MSE over d coordinates: grad = 2 (theta - c) / d
    mean_c = torch.stack(centers).mean(0)
    expected = theta0 + eps * (1 - (1 - beta) ** k) * (mean_c - theta0)
    torch.testing.assert_close(learner.init["theta"].detach(), expected)


def test_lora_plus_scales_b_steps():
    learner = build_learner(make_config(inner_lr=0.01, lora_plus_ratio=16.0, lora_r=2, target_modules=["q_proj"]),
                            small_llama())
    b = [n for n in learner.step_sizes if "lora_B" in n]
    a = [n for n in learner.step_sizes if "lora_A" in n]
    assert b and a
    assert all(float(learner.step_sizes[n]) == pytest.approx(0.16) for n in b)
    assert all(float(learner.step_sizes[n]) == pytest.approx(0.01) for n in a)


def test_adam_inner_loop_has_no_nan_at_zero_gradients():
    # standard LoRA init (B = 0): A's first inner gradient is exactly zero
    learner = build_learner(make_config(method="maml", inner_steps=2, inner_optimizer="adam", lora_r=2,
                                        target_modules=["q_proj", "v_proj"]), small_llama())
    episode = learner.episode(CopyFamily().sample("train", np.random.default_rng(0)))
    grads = algorithms.maml.task_gradient(learner, episode).grads
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_A" in n)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_protomaml_meta_gradient_matches_finite_differences(metric):
    from metalearn.foundation import byte_tokenizer
    from tests.helpers import IntentFamily, small_bert

    config = make_config(method="maml", inner_steps=2, inner_lr=0.05, lora_r=2, target_modules=["query", "value"],
                         init_lora_weights="gaussian", prompt_tokens=2, head="prototype", head_metric=metric,
                         head_temperature=0.5, compute_dtype="float64")
    learner = build_learner(config, small_bert(dtype=torch.float64), tokenizer=byte_tokenizer())
    episode = learner.episode(IntentFamily().sample("train", np.random.default_rng(0)))
    analytic, numeric = directional_fd(learner, episode)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_first_order_protomaml_runs_and_reaches_the_prototype_path():
    from metalearn.foundation import byte_tokenizer
    from tests.helpers import IntentFamily, small_bert

    config = make_config(method="fomaml", inner_steps=2, lora_r=2, target_modules=["query"], head="prototype",
                         init_lora_weights="gaussian")
    learner = build_learner(config, small_bert(), tokenizer=byte_tokenizer())
    episode = learner.episode(IntentFamily().sample("train", np.random.default_rng(0)))
    grads = algorithms.maml.task_gradient(learner, episode).grads
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_inner_step_treats_the_prototype_head_as_an_independent_tensor():
    """The inner gradient of LoRA is the partial derivative with the head held fixed (not through the prototypes)."""
    from metalearn.foundation import byte_tokenizer
    from metalearn.functional import prototype_head, task_loss
    from tests.helpers import IntentFamily, small_bert

    config = make_config(method="maml", inner_steps=1, inner_lr=0.1, lora_r=2, target_modules=["query"],
                         head="prototype", init_lora_weights="gaussian", compute_dtype="float64")
    learner = build_learner(config, small_bert(dtype=torch.float64), tokenizer=byte_tokenizer())
    episode = learner.episode(IntentFamily().sample("train", np.random.default_rng(0)))
    fast, _ = learner.inner_adapt(episode)
    theta = {n: t.detach().clone().requires_grad_() for n, t in learner.init.items()}
    head = {n: t.detach().requires_grad_() for n, t in prototype_head(learner.model, theta, episode.support, 3).items()}
    loss = task_loss(learner.model, {**theta, **head}, episode.support, "classification")
    grads = torch.autograd.grad(loss, list(theta.values()) + list(head.values()))
    expected = {n: t - 0.1 * g for (n, t), g in zip({**theta, **head}.items(), grads)}
    for name, value in expected.items():
        torch.testing.assert_close(fast[name].detach(), value.detach())
