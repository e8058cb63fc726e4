"""Tiny models and families shared by the engine tests (built from configs, no network)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metalearn.base import tiny_llama
from metalearn.tasks.task import Task


def small_llama(seed: int = 0, dtype=torch.float32) -> nn.Module:
    return tiny_llama(vocab_size=128, hidden_size=32, layers=2, heads=2, seed=seed, dtype=dtype)


def small_gpt2(seed: int = 0, dtype=torch.float64) -> nn.Module:
    """GPT-2 keeps every op in the model's dtype (Llama's RMSNorm upcasts to float32): for float64 checks."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)).to(dtype)


class Quadratic(nn.Module):
    """forward(x) = theta for every row: MSE against y = c is the quadratic ||theta - c||^2 / d."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return self.theta.expand(x.shape[0], -1)


class CopyFamily:
    """Tiny generation tasks: copy a short string, with a task-specific suffix letter."""

    kind = "generation"

    def sample(self, split, rng):
        letter = "xyz"[int(rng.integers(3))]
        words = ["".join(rng.choice(list("abcd"), 3)) for _ in range(8)]
        rows = {"prompt": [w + "=" for w in words], "completion": [w + letter for w in words]}
        support = {k: v[:4] for k, v in rows.items()}
        query = {k: v[4:] for k, v in rows.items()}
        return Task(support, query, "generation", task_id=f"copy-{letter}")


def sinusoid_task(rng, k: int = 10, q: int = 10, dtype=torch.float32) -> Task:
    a, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
    x = rng.uniform(-5, 5, (k + q, 1))
    y = a * np.sin(x + phase)
    x, y = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)
    return Task({"x": x[:k], "y": y[:k]}, {"x": x[k:], "y": y[k:]}, "regression", task_id=f"sin-{a:.2f}-{phase:.2f}")


class SinusoidFamily:
    kind = "regression"

    def __init__(self, k: int = 10, q: int = 10, dtype=torch.float32):
        self.k, self.q, self.dtype = k, q, dtype

    def sample(self, split, rng):
        return sinusoid_task(rng, self.k, self.q, self.dtype)
