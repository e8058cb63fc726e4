"""Which meta-learned set adapts best at an equal parameter count: LoRA, a soft prompt, a prefix, or LoRA
with either, on the procedural ``text_rules`` family and a frozen NF4 base.

The base is a tiny Llama from ``metalearn.pretrain`` (plain causal-LM training here for a few minutes on
the family's train strings, a stand-in for a foundation model, not one; kept in ``<output-dir>/base/<key>/``
and reused by a rerun), or ``--model`` (any causal LM by name or path). With hidden size H, L layers and LoRA
rank r on the q and v projections (4rHL numbers), every set gets the same budget:

* ``lora``         LoRA r on q, v
* ``prompt``       a soft prompt of 4rL tokens (4rL x H)
* ``prefix``       a key/value prefix of 2r positions at every layer (2r x 2LH)
* ``lora+prompt``  LoRA r/2 + a 2rL-token soft prompt
* ``lora+prefix``  LoRA r/2 + an r-position prefix

Every set starts from its usual init before meta-training: LoRA with B = 0, the soft prompt from the
token embeddings of a text (Lester et al. 2021; ``--prompt-init-text``), the prefix at zero keys and
values (peft's ``init_weights="zero"``; its random N(0, 1) default swamps a small model's attention).
Each set is meta-trained the same way (first-order Meta-SGD over an Adam inner loop: Adam's steps do
not scale with the gradient, whose size differs a lot between a prefix and LoRA, and the step size per
tensor is meta-learned, so no set is held back by a step size chosen for another), then adapted
on the support sets of the same held-out rule instances and scored by completion NLL (mean ± 95% CI)
and greedy exact match after 0, 1 and 5 inner steps; paired differences are taken against ``lora``.

    python examples/adapter_sets.py                 # the full run on CPU (about 10 minutes of CPU)
    python examples/adapter_sets.py --quick         # a smoke run in under a minute

Writes ``table.md``, ``results.json`` and ``eval/`` (the harness's full report) into ``--output-dir``
(default ``runs/adapter_sets``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

import metalearn
from metalearn.pretrain import PretrainConfig, pretrained_base  # the stand-in base of the examples
from metalearn.tasks import load

SETS = ("lora", "prompt", "prefix", "lora+prompt", "lora+prefix")


def set_settings(r: int, layers: int, prompt_text: str) -> dict[str, dict]:
    """``metalearn.fit`` adapter settings per set, all with 4rHL trainable numbers (see the docstring)."""
    prompt = dict(prompt_init_text=prompt_text)
    prefix = dict(prefix_init="zero")
    return {"lora": dict(lora_r=r),
            "prompt": dict(lora=False, prompt_tokens=4 * r * layers, **prompt),
            "prefix": dict(lora=False, prefix_tokens=2 * r, **prefix),
            "lora+prompt": dict(lora_r=r // 2, prompt_tokens=2 * r * layers, **prompt),
            "lora+prefix": dict(lora_r=r // 2, prefix_tokens=r, **prefix)}


def n_params(learner) -> int:
    return sum(t.numel() for n, t in learner.init.items() if not n.startswith("head."))


def fit_sets(args, family, base_path: str, layers: int) -> tuple[dict, dict, dict]:
    common = dict(model_name=base_path, quantization=args.quantization, target_modules=["q_proj", "v_proj"],
                  method="metasgd", inner_order="first", inner_steps=args.inner_steps, inner_lr=args.inner_lr,
                  inner_optimizer=args.inner_optimizer,
                  meta_batch=args.meta_batch, meta_lr=args.meta_lr, meta_steps=args.meta_steps,
                  outer_schedule="cosine", seed=args.seed, max_length=args.max_length)
    learners, seconds, sizes = {}, {}, {}
    for name, extra in set_settings(args.lora_r, layers, args.prompt_init_text).items():
        if name not in args.sets:
            continue
        start = time.time()
        learners[name] = metalearn.fit(family, progress=not args.quiet, **common, **extra,
                                       output_dir=os.path.join(args.output_dir, "train", name))
        seconds[name], sizes[name] = time.time() - start, n_params(learners[name])
        tail = np.mean([r["query_loss"] for r in learners[name].history[-20:]])
        print(f"[train] {name}: {sizes[name]:,} parameters, {args.meta_steps} meta-steps in {seconds[name]:.0f}s, "
              f"last train query NLL {tail:.3f}", flush=True)
    return learners, seconds, sizes


def table(results, sizes: dict, steps: list[int], title: str) -> str:
    """One row per set: parameters, NLL and exact match after each step count, NLL difference to lora."""
    cols = [("nll", s) for s in steps] + [("exact_match", steps[-1])]
    head = ["set", "params"] + [f"{m} @{s}" for m, s in cols] + [f"Δnll vs lora @{steps[-1]}"]
    lines = [title, "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in results.methods:
        cells = [name, f"{sizes[name]:,}" if name in sizes else "—"]
        for metric, s in cols:
            mean, ci = results.score(name, metric, s)
            cells.append(f"{mean:.3f} ± {ci:.3f}" if not math.isnan(ci) else f"{mean:.3f}")
        try:
            mean, ci = results.diff(name, "nll", steps[-1])
            cells.append(f"{mean:+.3f} ± {ci:.3f}")
        except (KeyError, ValueError):
            cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets everywhere")
    p.add_argument("--model", default=None, help="a causal LM by name or path; default: pretrain a tiny Llama here")
    p.add_argument("--output-dir", default="runs/adapter_sets")
    p.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of " + ",".join(SETS))
    p.add_argument("--pretrain-steps", type=int, default=None, help="tiny base only (default 1500; quick 40)")
    p.add_argument("--hidden", type=int, default=64, help="tiny base width")
    p.add_argument("--layers", type=int, default=2, help="tiny base depth")
    p.add_argument("--lora-r", type=int, default=4, help="LoRA rank of the lora set; sets the common budget")
    p.add_argument("--prompt-init-text", default="abcdefgh=", help="soft prompt init: this text's embeddings")
    p.add_argument("--inner-steps", type=int, default=5, help="inner steps in meta-training")
    p.add_argument("--inner-lr", type=float, default=0.01, help="initial inner step size (then meta-learned)")
    p.add_argument("--inner-optimizer", default="adam", choices=["sgd", "adam"])
    p.add_argument("--meta-steps", type=int, default=None, help="default 300; quick 3")
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--meta-lr", type=float, default=3e-3)
    p.add_argument("--episodes", type=int, default=None, help="test episodes (default 100; quick 3)")
    p.add_argument("--steps", default=None, help="inner step counts to score (default 0,1,5; quick 0,1)")
    p.add_argument("--lr-grid", default="0.3,1,3", help="multipliers of the step sizes tried on val tasks ('' = none)")
    p.add_argument("--val-episodes", type=int, default=None, help="val tasks for the lr search (default 8; quick 2)")
    p.add_argument("--max-length", type=int, default=128, help="token budget per example")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in args.sets if s not in SETS]
    if bad or not args.sets:
        p.error(f"unknown set(s) {bad}; choose from {list(SETS)}")
    if args.lora_r < 2 or args.lora_r % 2:
        p.error(f"--lora-r={args.lora_r} is invalid: use an even rank >= 2 (the LoRA pairs take rank r/2)")
    args.quantization = None if args.quantization == "none" else args.quantization
    defaults = dict(pretrain_steps=(40, 1500), meta_steps=(3, 300), episodes=(3, 100), val_episodes=(2, 8))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.steps = [int(s) for s in (args.steps or ("0,1" if args.quick else "0,1,5")).split(",")]
    args.lr_grid = [float(g) for g in args.lr_grid.split(",") if g.strip()] or None
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    family = load("text_rules")
    pretrain = None
    if args.model is None:
        config = PretrainConfig(hidden=args.hidden, layers=args.layers, steps=args.pretrain_steps, batch=64, lr=3e-3,
                                seed=args.seed, max_length=args.max_length, warmup=50)
        base_path, pretrain = pretrained_base(family, config, cache_dir=os.path.join(args.output_dir, "base"))
        print(f"[base] tiny Llama, {pretrain['params']:,} parameters, pretrained {pretrain['seconds']:.0f}s", flush=True)
    else:
        base_path = args.model
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(base_path).num_hidden_layers
    learners, train_seconds, sizes = fit_sets(args, family, base_path, layers)
    t0 = time.time()
    results = metalearn.evaluate(learners, family, baselines=["zero_shot"], steps=args.steps, episodes=args.episodes,
                                 reference="lora" if "lora" in learners else None, seed=args.seed,
                                 lr_grid=args.lr_grid, val_episodes=args.val_episodes, progress=not args.quiet,
                                 output_dir=os.path.join(args.output_dir, "eval"))
    eval_seconds = time.time() - t0
    wall = time.time() - start
    cpu = time.process_time()
    command = " ".join(["python examples/adapter_sets.py"] + (sys.argv[1:] if argv is None else list(argv)))
    base_text = (f"a tiny Llama ({pretrain['params']:,} parameters, {args.hidden}d x {args.layers} layers) pretrained "
                 f"here for {args.pretrain_steps} steps on the family's train strings" if pretrain else f"`{args.model}`")
    header = [
        f"Command: `{command}`", "",
        f"Family: `text_rules`. Base: {base_text}; frozen, {args.quantization or 'full precision'}. Every set has "
        f"the budget of LoRA r={args.lora_r} on q_proj, v_proj; inits: LoRA B = 0, soft prompt from the embeddings "
        f"of {args.prompt_init_text!r}, prefix at zero. Meta-training: first-order Meta-SGD, "
        f"{args.meta_steps} meta-steps x {args.meta_batch} tasks, {args.inner_steps} {args.inner_optimizer} inner "
        f"steps (step sizes "
        f"from {args.inner_lr}, learned per tensor), meta lr {args.meta_lr} (cosine) "
        f"({', '.join(f'{m} {s:.0f}s' for m, s in train_seconds.items())}). Evaluation: the same {args.episodes} "
        f"held-out rule instances for every set; step sizes scaled per set and step count by the best of "
        f"x{args.lr_grid} on {args.val_episodes} val tasks; greedy decoding. Evaluation {eval_seconds:.0f}s; "
        f"wall time {wall / 60:.1f} min, CPU time {cpu / 60:.1f} min.", ""]
    text = "\n".join(header + [table(results, sizes, args.steps,
                                     f"### Held-out text_rules tasks: completion NLL per token (lower is better) "
                                     f"and exact match after N inner steps; mean ± 95% CI over {args.episodes} "
                                     f"episodes; Δ: paired difference to lora"), ""])
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(text)
    payload = {"settings": vars(args), "sizes": sizes, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
               "wall_seconds": wall, "cpu_seconds": cpu,
               "scores": {f"{m}/{metric}/steps={s}": results.score(m, metric, s)
                          for m in results.methods for metric in ("nll", "exact_match") for s in args.steps}}
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    print(text)
    return payload


if __name__ == "__main__":
    main()
