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

    python -m experiments.adapter_sets              # the full run on CPU (about 10 minutes of CPU)
    python -m experiments.adapter_sets --quick      # a smoke run in under a minute

Writes ``table.md``, ``results.json`` and ``eval/`` (the harness's full report) into ``--output-dir``
(default ``runs/adapter_sets``).
"""
from __future__ import annotations

import argparse
import os
import time

import metalearn
from experiments import common
from metalearn.tasks import load

SETS = ("lora", "prompt", "prefix", "lora+prompt", "lora+prefix")
BUDGETS = dict(pretrain_steps=(40, 1500), meta_steps=(3, 300), episodes=(3, 100), val_episodes=(2, 8))
STEPS = ("0,1", "0,1,5")
"""Inner step counts scored: (--quick, full)."""


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
    shared = dict(model_name=base_path, quantization=args.quantization, target_modules=["q_proj", "v_proj"],
                  method="metasgd", inner_order="first", inner_steps=args.inner_steps, inner_lr=args.inner_lr,
                  inner_optimizer=args.inner_optimizer,
                  meta_batch=args.meta_batch, meta_lr=args.meta_lr, meta_steps=args.meta_steps,
                  outer_schedule="cosine", seed=args.seed, max_length=args.max_length)
    settings = {name: dict(shared, **extra) for name, extra in
                set_settings(args.lora_r, layers, args.prompt_init_text).items() if name in args.sets}
    learners, seconds = common.fit_each(family, settings, args)
    sizes = {name: n_params(learner) for name, learner in learners.items()}
    print("[train] parameters: " + ", ".join(f"{name} {size:,}" for name, size in sizes.items()), flush=True)
    return learners, seconds, sizes


def table(results, sizes: dict, steps: list[int], title: str) -> str:
    """One row per set: parameters, NLL and exact match after each step count, NLL difference to lora."""
    cols = [("nll", s) for s in steps] + [("exact_match", steps[-1])]
    head = ["set", "params"] + [f"{m} @{s}" for m, s in cols] + [f"Δnll vs lora @{steps[-1]}"]
    lines = [title, "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in results.methods:
        cells = [name, f"{sizes[name]:,}" if name in sizes else "—"]
        for metric, s in cols:
            cells.append(common.mean_ci(*results.score(name, metric, s)))
        try:
            mean, ci = results.diff(name, "nll", steps[-1])
            cells.append(f"{mean:+.3f} ± {ci:.3f}")
        except (KeyError, ValueError):
            cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__, show_defaults=True)
    common.add_run_arguments(p, "runs/adapter_sets", "a smoke run: tiny budgets everywhere")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of " + ",".join(SETS))
    common.add_lm_arguments(p, BUDGETS, STEPS, lr_grid="0.3,1,3", quantizations=["nf4", "none"])
    p.add_argument("--lora-r", type=int, default=4, help="LoRA rank of the lora set; sets the common budget")
    p.add_argument("--prompt-init-text", default="abcdefgh=", help="soft prompt init: this text's embeddings")
    p.add_argument("--inner-lr", type=float, default=0.01, help="initial inner step size (then meta-learned)")
    args = p.parse_args(argv)
    args.argv = common.argv_of(argv)
    args.sets = common.choose(p, args.sets, SETS, "set")
    if args.lora_r < 2 or args.lora_r % 2:
        p.error(f"--lora-r={args.lora_r} is invalid: use an even rank >= 2 (the LoRA pairs take rank r/2)")
    common.resolve_lm_arguments(args, BUDGETS, STEPS)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    start = common.setup(args)
    family = load("text_rules")
    pretrain = None
    if args.model is None:
        base_path, pretrain = common.tiny_base(args, family, os.path.join(args.output_dir, "base"), batch=64, lr=3e-3,
                                               warmup=50)
        print(f"[base] tiny Llama, {pretrain['params']:,} parameters, pretrained {pretrain['seconds']:.0f}s",
              flush=True)
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
    base_text = (f"a tiny Llama ({pretrain['params']:,} parameters, {args.hidden}d x {args.layers} layers) pretrained "
                 f"here for {args.pretrain_steps} steps on the family's train strings"
                 if pretrain else f"`{args.model}`")
    header = [
        f"Command: `{common.command('adapter_sets', args.argv)}`", "",
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
    payload = {"settings": vars(args), "sizes": sizes, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
               "wall_seconds": wall, "cpu_seconds": cpu,
               "scores": {f"{m}/{metric}/steps={s}": results.score(m, metric, s)
                          for m in results.methods for metric in ("nll", "exact_match") for s in args.steps}}
    return common.write_report(args.output_dir, text, payload)


if __name__ == "__main__":
    main()
