"""``metalearn demo``: the offline CPU demo README's first command runs.

Part 1 (Finn et al. 2017's sinusoids): Meta-SGD meta-trains an MLP 1-40-40-1, a multi-task init is
trained jointly on the same tasks for the same number of steps, and both are compared with a random
init at 0/1/5/10 inner steps for K = 5 and 10 (inner learning rates of every method picked on val tasks).
Part 2 (``substitution``, new letter tables learned from 8 examples): a tiny Llama pretrained here on the
train tables (``metalearn.pretrain``, cached by config: minutes the first time, then loaded), frozen in
NF4, gets LoRA and a soft prompt meta-learned with second-order MAML (cached too), compared with
random-init PEFT, the frozen base and in-context examples; then one held-out table is shown: its 8
examples, the frozen base's answers and the adapted model's answers.

Runs single-threaded: these models are so small that a second thread only spin-waits (and on a shared
machine it makes each op many times slower); the previous thread count is restored afterwards.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time

import torch

from . import tasks
from .build import load
from .eval import EvalResults, evaluate
from .files import atomic_write
from .training import fit

__all__ = ["BUDGETS", "run_demo"]

log = logging.getLogger("metalearn")

BUDGETS = {
    "full": {"sin_meta_steps": 1500, "sin_episodes": 300, "sin_val": 16, "base_steps": 3000, "llm_meta_steps": 300,
             "llm_episodes": 20, "llm_val": 4, "llm_steps": [0, 1, 5, 10]},
    "quick": {"sin_meta_steps": 20, "sin_episodes": 8, "sin_val": 2, "base_steps": 1200, "llm_meta_steps": 60,
              "llm_episodes": 4, "llm_val": 1, "llm_steps": [0, 10]},
}
FIT = dict(method="maml", quantization="nf4", lora_r=4, target_modules=["q_proj", "v_proj"], prompt_tokens=6,
           inner_steps=5, inner_lr=1e-2, inner_optimizer="adam", meta_batch=4, meta_lr=3e-3, outer_schedule="cosine",
           max_length=128)
"""The meta-learning settings of ``experiments/text_rules.py``'s defaults (its README run)."""


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                               torch.nn.Linear(40, 1))


def sinusoid_part(output_dir: str, budget: dict, seed: int, progress: bool) -> EvalResults:
    """Meta-SGD vs multi-task vs random init on sinusoid regression (MSE)."""
    family = tasks.load("sinusoid")
    common = dict(inner_steps=1, inner_lr=0.01, meta_batch=8, seed=seed, progress=progress)
    steps = budget["sin_meta_steps"]
    metasgd = fit(family, model=_mlp(seed), method="metasgd", meta_lr=1e-3, meta_steps=steps, **common)
    multitask = fit(family, model=_mlp(seed), method="multitask", meta_lr=1e-3, meta_steps=steps, **common)
    return evaluate({"metasgd": metasgd, "multitask": multitask}, family, baselines=["random_init"],
                    steps=[0, 1, 5, 10], shots=[5, 10], episodes=budget["sin_episodes"], seed=seed,
                    lr_grid=(0.1, 0.3, 1.0, 3.0), val_episodes=budget["sin_val"],
                    output_dir=os.path.join(output_dir, "sinusoid"), progress=progress)


def substitution_part(output_dir: str, budget: dict, seed: int, progress: bool) -> tuple[EvalResults, str]:
    """MAML of LoRA + soft prompt on a pretrained tiny NF4 Llama vs random-init PEFT, frozen base, in-context."""
    from .pretrain import PretrainConfig, pretrained_base

    family = tasks.load("substitution")
    base_path, info = pretrained_base(family, PretrainConfig(steps=budget["base_steps"], seed=seed), progress=progress)
    log.info("demo: tiny base %s (%s)", base_path, "cached" if info["cached"] else f"trained in {info['seconds']:.0f}s")
    kwargs = dict(FIT, model_name=base_path, meta_steps=budget["llm_meta_steps"], seed=seed)
    key = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:16]
    saved = os.path.join(base_path, "learners", key)  # beside the base it was trained on
    if os.path.isfile(os.path.join(saved, "metalearn.json")):
        learner = load(saved)
    else:
        learner = fit(family, progress=progress, **kwargs)
        learner.save(saved)
    results = evaluate({"maml": learner}, family, baselines=["random_init", "zero_shot", "in_context"],
                       steps=budget["llm_steps"], episodes=budget["llm_episodes"], seed=seed,
                       lr_grid=(0.3, 1.0, 3.0, 10.0), val_episodes=budget["llm_val"],
                       output_dir=os.path.join(output_dir, "substitution"), progress=progress)
    return results, show_example(learner, family, results, seed)


def show_example(learner, family, results: EvalResults, seed: int) -> str:
    """The first test episode of the evaluation: its table, 8 examples, the frozen base's and the adapted answers."""
    import dataclasses

    from .eval.inputs import sample_tasks
    from .generate import greedy

    task = sample_tasks(family, "test", 1, seed)[0]  # the evaluation's first test episode (same seed)
    steps = max(results.settings["steps"])
    scale = next((t["scale"] for t in results.tuning if t["method"] == "maml" and t["steps"] == steps), 1.0)
    episode = learner.episode(dataclasses.replace(task, query=task.support))  # adaptation sees the support set only
    fast, _ = learner.adapt_params(episode, steps, scale)
    prompts, truth = list(task.query["prompt"]), [c.strip() for c in task.query["completion"]]
    with _restored(learner):
        adapted = [t.strip().split("\n")[0] for t in greedy(learner.model, learner.adapted, fast, prompts, 8)]
        with learner.frozen() as frozen:
            bare = [t.strip().split("\n")[0] for t in greedy(frozen, None, {}, prompts, 8)]
    table = task.meta["table"]
    lines = [f"A new rule, never seen in pretraining or meta-training: `{task.meta['rule_id']}`, i.e. "
             + " ".join(f"{a}->{b}" for a, b in zip(family.alphabet, table)) + ".", "",
             "Its 8 examples (all the adapters see): " + ", ".join(
                 f"`{p}{c.strip()}`" for p, c in zip(task.support["prompt"], task.support["completion"])), "",
             f"| query | answer | frozen base (bare prompt) | meta-learned init + {steps} steps on the 8 examples |",
             "|---|---|---|---|"]
    mark = {True: "right", False: "wrong"}
    for p, t, b, a in zip(prompts, truth, bare, adapted):
        lines.append(f"| `{p}` | `{t}` | `{b}` ({mark[b == t]}) | `{a}` ({mark[a == t]}) |")
    hits = sum(a == t for a, t in zip(adapted, truth))
    lines += ["", f"Adapted: {hits}/{len(truth)} exactly right on this table; frozen base: "
              f"{sum(b == t for b, t in zip(bare, truth))}/{len(truth)}."]
    return "\n".join(lines)


@contextlib.contextmanager
def _restored(learner):
    """Put the learner's adapter tensors back after decoding wrote adapted values into them."""
    from .adapters import adaptable_params, write_params

    saved = {n: t.detach().clone() for n, t in adaptable_params(learner.adapted).items()}
    try:
        yield
    finally:
        write_params(learner.adapted, saved)


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
    examples: dict[str, str] = {}
    try:
        start = time.time()
        results["sinusoid"] = sinusoid_part(output_dir, budget, seed, progress)
        times["sinusoid"] = time.time() - start
        if llama:
            start = time.time()
            results["substitution"], examples["substitution"] = substitution_part(output_dir, budget, seed, progress)
            times["substitution"] = time.time() - start
    finally:
        torch.set_num_threads(threads)
    report = _report(results, times, quick, output_dir, examples)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write(os.path.join(output_dir, "results.md"), report)
    print(report)
    return results


def _report(results: dict[str, EvalResults], times: dict[str, float], quick: bool, output_dir: str,
            examples: dict[str, str]) -> str:
    parts = ["# metalearn demo" + (" (--quick: small budgets and few episodes, rough numbers)" if quick else ""), ""]
    titles = {"sinusoid": "Sinusoid regression, MLP 1-40-40-1: Meta-SGD vs multi-task vs random init",
              "substitution": "New letter tables from 8 examples, on a tiny pretrained NF4 Llama: meta-learned "
                              "(MAML) LoRA + soft prompt vs random-init PEFT, the frozen base and in-context examples"}
    for name, res in results.items():
        shown = ["exact_match", "rougeL_char"] if name == "substitution" else None
        parts += [f"# {titles[name]} ({times[name]:.0f} s)", ""]
        if name in examples:
            parts += [examples[name], ""]
        parts += [res.table(shown)]
        parts += [f"Files: {os.path.join(output_dir, name)}/ (results.json, summary.csv, paired.csv, episodes.csv, "
                  "results.md, PNG plots)", ""]
    return "\n".join(parts)
