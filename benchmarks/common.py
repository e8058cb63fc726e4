"""Workloads and measuring tools shared by the benchmarks (and the memory tests).

* ``llama_workload``: the core-issue tiny Llama (vocab 512, hidden 128, 4 layers, 4 heads, eager
  attention), LoRA r=8 on q_proj/v_proj, random-token episodes of 8 x 32 support and query.
* ``sinusoid_workload``: Finn et al.'s MLP 1-40-40-1 on sinusoid tasks, K=10.
* ``GraphMemory``: the peak bytes held for backward (saved tensors, each storage counted once, the
  model's own frozen weights excluded): the memory a meta-step's graph costs, deterministic and
  independent of the allocator.
"""
from __future__ import annotations

import statistics
import time
import weakref
from typing import Callable, Optional

import numpy as np
import torch

from metalearn import algorithms
from metalearn.build import build_learner
from metalearn.foundation import tiny_llama
from metalearn.learner import Episode, Learner
from metalearn.training import make_config

LLAMA_ADAPTER = dict(lora_r=8, target_modules=["q_proj", "v_proj"])


def random_tokens(rows: int, seq: int, vocab: int, gen: torch.Generator) -> dict:
    ids = torch.randint(3, vocab, (rows, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def llama_workload(quantization: Optional[str] = None, meta_batch: int = 4, steps: int = 3, rows: int = 8,
                   seq: int = 32, seed: int = 0, **overrides) -> tuple[Learner, list[Episode]]:
    """The core-issue tiny Llama learner and ``meta_batch`` random-token generation episodes."""
    overrides.setdefault("method", "maml")
    config = make_config(inner_steps=steps, quantization=quantization, **LLAMA_ADAPTER, **overrides)
    learner = build_learner(config, tiny_llama(seed=seed))
    vocab = learner.model.module.config.vocab_size if hasattr(learner.model.module, "config") else 512
    gen = torch.Generator().manual_seed(seed)
    episodes = [Episode(random_tokens(rows, seq, vocab, gen), random_tokens(rows, seq, vocab, gen), "generation", 0,
                        f"random-{i}") for i in range(meta_batch)]
    return learner, episodes


def sinusoid_workload(meta_batch: int = 25, steps: int = 3, k: int = 10, seed: int = 0,
                      **overrides) -> tuple[Learner, list[Episode]]:
    """Finn et al.'s sinusoid regression: MLP 1-40-40-1, K=10 support and query points per task."""
    from metalearn.tasks import Sinusoid

    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                              torch.nn.Linear(40, 1))
    overrides.setdefault("method", "maml")
    learner = build_learner(make_config(inner_steps=steps, **overrides), mlp)
    rng = np.random.default_rng(seed)
    family = Sinusoid(k_shot=k, q_query=k)
    return learner, [learner.episode(family.sample("train", rng)) for _ in range(meta_batch)]


def meta_step(learner: Learner, episodes: list[Episode], method: str = "maml") -> Callable[[], None]:
    """One meta-gradient over the meta-batch, as ``fit`` takes it (the outer AdamW step is negligible)."""
    return lambda: algorithms.meta_gradient(learner, episodes, method)


def plain_lora_step(learner: Learner, batches: list[dict]) -> Callable[[], None]:
    """Plain LoRA fine-tuning: forward + backward + AdamW step of the peft model on the rows of ``batches``.

    Uses the module's own parameters and bitsandbytes' own kernels, as a peft/QLoRA training loop would.
    """
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    params = [p for p in learner.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = learner.model(batch) if learner.model.model_type != "module" else \
            torch.nn.functional.mse_loss(learner.model(batch), batch["y"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def handwritten_maml(learner: Learner, episodes: list[Episode], order: str) -> Callable[[], None]:
    """The per-task MAML loop one writes by hand (functional_call + autograd.grad), as a speed reference."""
    from torch.func import functional_call

    model, lr, steps = learner.model, learner.config.inner.lr, learner.config.inner.steps
    init = learner.init
    kind = episodes[0].kind

    def loss(params, batch):
        out = functional_call(model, {"module." + n: t for n, t in params.items()}, (batch,), strict=False)
        return out if kind == "generation" else torch.nn.functional.mse_loss(out, batch["y"])

    def step():
        total = {n: torch.zeros_like(t) for n, t in init.items()}
        for episode in episodes:
            fast = dict(init)
            for _ in range(steps):
                grads = torch.autograd.grad(loss(fast, episode.support), list(fast.values()),
                                            create_graph=order == "second")
                fast = {n: t - lr * (g if order == "second" else g.detach()) for (n, t), g in zip(fast.items(), grads)}
            grads = torch.autograd.grad(loss(fast, episode.query), list(init.values()))
            for n, g in zip(init, grads):
                total[n] += g

    return step


class GraphMemory:
    """Peak bytes alive in autograd's saved tensors while the context is open (each storage once).

    ``exclude`` holds tensors that exist anyway (the frozen base's weights), which are not counted.

    Example:
        >>> with GraphMemory(exclude=model.parameters()) as mem:
        ...     step()
        >>> mem.peak  # bytes
    """

    def __init__(self, exclude=()):
        self.skip = {t.untyped_storage().data_ptr() for t in exclude}
        self.live: dict[int, list] = {}  # storage ptr -> [refcount, nbytes]
        self.current = self.peak = 0

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.skip or ptr == 0:
            return t
        entry = self.live.setdefault(ptr, [0, storage.nbytes()])
        if entry[0] == 0:
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        holder = _Saved(t)
        weakref.finalize(holder, self._release, ptr)
        return holder

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[ptr]

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.t if isinstance(h, _Saved) else h)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


class _Saved:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t):
        self.t = t


def median_times(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                 clock: Callable[[], float] = time.process_time) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so machine load hits all alike.

    ``clock``: CPU seconds of this process by default (with one torch thread, what the work costs,
    whatever else runs on the machine); ``time.perf_counter`` for wall time (e.g. after a CUDA sync).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}
