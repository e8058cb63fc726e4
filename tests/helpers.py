"""Tiny models and families shared by the engine tests (built from configs, no network)."""
from __future__ import annotations

import torch
from torch import nn

from metalearn.foundation import tiny_llama
from metalearn.tasks import Sinusoid, Task


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
    """One Finn et al. sinusoid task from the library's family, in ``dtype``."""
    task = Sinusoid(k_shot=k, q_query=q).sample("train", rng)
    cast = lambda part: {c: v.to(dtype) for c, v in part.items()}  # noqa: E731
    return Task(cast(task.support), cast(task.query), "regression", task_id=task.task_id)


def SinusoidFamily(k: int = 10, q: int = 10) -> Sinusoid:
    return Sinusoid(k_shot=k, q_query=q)


def small_bert(seed: int = 0, dtype=torch.float32) -> nn.Module:
    """A tiny BERT encoder built from a config (the byte tokenizer's ids fit its vocabulary)."""
    from transformers import AutoModel, BertConfig

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    return AutoModel.from_config(cfg, attn_implementation="eager", dtype=dtype)


class IntentFamily:
    """3-way 2-shot toy intents: the class is which keyword a sentence contains."""

    kind = "classification"
    words = ["alarm", "weather", "music", "timer", "news", "taxi"]

    def sample(self, split, rng):
        classes = rng.choice(len(self.words), 3, replace=False)
        rows = lambda n: [(f"please {self.words[c]} now {i}", label) for label, c in enumerate(classes)  # noqa: E731
                          for i in range(n)]
        support, query = rows(2), rows(2)
        as_columns = lambda r: {"text": [t for t, _ in r], "label": torch.tensor([l for _, l in r])}  # noqa: E731,E741
        return Task(as_columns(support), as_columns(query), "classification",
                    label_names=tuple(self.words[c] for c in classes), task_id="intents-" + "-".join(map(str, classes)))


def dequantized_copy(quantized: nn.Module, model_fp32: nn.Module) -> nn.Module:
    """Give an fp32 model the exact weights an NF4 model computes with (its dequantized Linear4bit layers)."""
    import bitsandbytes as bnb

    fp_modules = dict(model_fp32.named_modules())
    count = 0
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            with torch.no_grad():
                fp_modules[name.removesuffix(".base_layer")].weight.copy_(weight)
            count += 1
    assert count > 0
    return model_fp32


def saved_bytes_during(fn) -> int:
    """Total bytes autograd saves for backward while ``fn`` runs (a proxy for graph size)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]
