"""``metalearn demo``: the offline CPU demo README's first command runs.

Part 1 (Finn et al. 2017's sinusoids): Meta-SGD meta-trains an MLP 1-40-40-1, a multi-task init is
trained jointly on the same tasks for the same number of steps, and both are compared with a random
init at 0/1/5/10 inner steps for K = 5 and 10 (inner learning rates of every method picked on val tasks).
Part 2: a tiny Llama, quantized to NF4, gets LoRA and a soft prompt meta-learned on ``text_rules`` for a
short time, compared with random-init PEFT (a tiny random base can only learn so much: watch the NLL).

Runs single-threaded: these models are so small that a second thread only spin-waits (and on a shared
machine it makes each op many times slower); the previous thread count is restored afterwards.
"""
from __future__ import annotations

import logging
import os
import time

import torch

from .evaluate import EvalResults, evaluate
from .report import atomic_write

__all__ = ["BUDGETS", "run_demo"]

log = logging.getLogger("metalearn")

BUDGETS = {
    "full": {"sin_meta_steps": 1500, "sin_episodes": 300, "sin_val": 16, "llm_meta_steps": 150, "llm_episodes": 20,
             "llm_val": 4},
    "quick": {"sin_meta_steps": 20, "sin_episodes": 8, "sin_val": 2, "llm_meta_steps": 2, "llm_episodes": 2,
              "llm_val": 1},
}


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                               torch.nn.Linear(40, 1))


def sinusoid_part(output_dir: str, budget: dict, seed: int, progress: bool) -> EvalResults:
    """Meta-SGD vs multi-task vs random init on sinusoid regression (MSE)."""
    import metalearn

    family = metalearn.tasks.load("sinusoid")
    common = dict(inner_steps=1, inner_lr=0.01, meta_batch=8, seed=seed, progress=progress)
    steps = budget["sin_meta_steps"]
    metasgd = metalearn.fit(family, model=_mlp(seed), method="metasgd", meta_lr=1e-3, meta_steps=steps, **common)
    multitask = metalearn.fit(family, model=_mlp(seed), method="multitask", meta_lr=1e-3, meta_steps=steps, **common)
    return evaluate({"metasgd": metasgd, "multitask": multitask}, family, baselines=["random_init"],
                    steps=[0, 1, 5, 10], shots=[5, 10], episodes=budget["sin_episodes"], seed=seed,
                    lr_grid=(0.1, 0.3, 1.0, 3.0), val_episodes=budget["sin_val"],
                    output_dir=os.path.join(output_dir, "sinusoid"), progress=progress)


def text_rules_part(output_dir: str, budget: dict, seed: int, progress: bool) -> EvalResults:
    """LoRA + soft prompt on a tiny NF4 Llama, meta-learned (first-order MAML) vs random-init PEFT."""
    import metalearn
    from metalearn.base import tiny_llama

    family = metalearn.tasks.load("text_rules", k_shot=4, q_query=4)
    base = tiny_llama(vocab_size=128, hidden_size=32, layers=2, heads=2, seed=seed)
    learner = metalearn.fit(family, model=base, method="fomaml", inner_steps=1, inner_lr=0.05, meta_batch=4,
                            meta_lr=1e-2, meta_steps=budget["llm_meta_steps"], lora_r=4, prompt_tokens=4,
                            target_modules=["q_proj", "v_proj", "lm_head"], quantization="nf4", seed=seed,
                            progress=progress)
    return evaluate({"fomaml": learner}, family, baselines=["random_init", "zero_shot", "in_context"],
                    steps=[0, 1, 5], episodes=budget["llm_episodes"], seed=seed, lr_grid=(0.3, 1.0, 3.0, 10.0),
                    val_episodes=budget["llm_val"], output_dir=os.path.join(output_dir, "text_rules"),
                    progress=progress)


def run_demo(output_dir: str = os.path.join("runs", "demo"), *, quick: bool = False, seed: int = 0,
             llama: bool = True, progress: bool = True) -> dict[str, EvalResults]:
    """Run both parts, print one markdown report and write it (plus each part's files) under ``output_dir``."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={output_dir!r} is a file; give a folder path")
    budget = BUDGETS["quick" if quick else "full"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, EvalResults] = {}
    times: dict[str, float] = {}
    try:
        start = time.time()
        results["sinusoid"] = sinusoid_part(output_dir, budget, seed, progress)
        times["sinusoid"] = time.time() - start
        if llama:
            start = time.time()
            results["text_rules"] = text_rules_part(output_dir, budget, seed, progress)
            times["text_rules"] = time.time() - start
    finally:
        torch.set_num_threads(threads)
    report = _report(results, times, quick, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write(os.path.join(output_dir, "results.md"), report)
    print(report)
    return results


def _report(results: dict[str, EvalResults], times: dict[str, float], quick: bool, output_dir: str) -> str:
    parts = ["# metalearn demo" + (" (--quick: tiny budgets, the numbers mean nothing)" if quick else ""), ""]
    titles = {"sinusoid": "Sinusoid regression, MLP 1-40-40-1: Meta-SGD vs multi-task vs random init",
              "text_rules": "text_rules on a tiny NF4 Llama: meta-learned LoRA + soft prompt vs random-init PEFT"}
    for name, res in results.items():
        # a random tiny base rarely gets a string exactly right: for text_rules the NLL tells more
        shown = ["nll", "exact_match"] if name == "text_rules" else None
        parts += [f"# {titles[name]} ({times[name]:.0f} s)", "", res.table(shown)]
        parts += [f"Files: {os.path.join(output_dir, name)}/ (results.json, summary.csv, paired.csv, episodes.csv, "
                  "results.md, PNG plots)", ""]
    return "\n".join(parts)
