"""Meta-learned LoRA + soft-prompt init for a causal LM on a generative instruction family, vs random-init
PEFT and a multi-task init, on a frozen NF4 (4-bit) base.

Default: the procedural ``text_rules`` family (``abc=`` -> ``cba``; rules like rotate-by-k, Caesar shift,
a random alphabet permutation, ``(a*x+b) mod 10``; the test rule instances never occur in training) and
a tiny Llama built from a config with a byte-level tokenizer. A randomly initialized tiny Llama knows
nothing, so the script first **pretrains the whole tiny model briefly** with plain causal-LM training
on strings from the family's *train* tasks, saves it with ``save_pretrained`` and reloads it frozen in
NF4. That model stands in for a pretrained foundation model; it is not one, and the numbers say what a
few minutes of CPU pretraining make possible, nothing about real LMs.

Then, on the frozen NF4 base with LoRA (q/v projections) and a soft prompt:
* ``fomaml``    first-order MAML (``--methods`` takes any of maml, fomaml, reptile, multitask),
* ``multitask`` one LoRA + prompt trained jointly on all train tasks (the transfer baseline),
* ``random_init`` a fresh peft init (LoRA B = 0, random prompt) fine-tuned with the same inner loop,
* ``zero_shot`` the frozen base, no adapters,
are adapted on the support set of held-out test tasks and scored by greedy-decoding exact match,
ROUGE-L and completion NLL after 0, 1, 2, 5 and 10 inner steps (inner lr per method and step count
picked on val tasks, from a small grid).

    python examples/text_rules.py                    # the full run on CPU (about 15 minutes)
    python examples/text_rules.py --quick            # a smoke run in under a minute
    python examples/text_rules.py --quick --family instruction_induction   # the path on a real family
    python examples/text_rules.py --quick --family dialogsum

With a GPU and the Hugging Face Hub, any causal LM by name (no pretraining step then)::

    python examples/text_rules.py --model Qwen/Qwen2.5-0.5B --family instruction_induction \\
        --meta-steps 500 --meta-batch 4 --episodes 100
    python examples/text_rules.py --model Qwen/Qwen2.5-0.5B --family dialogsum --max-length 512

Writes into ``--output-dir`` (default ``runs/text_rules``): ``table.md``, ``results.json``, ``steps.png``
(exact match and NLL vs inner steps), ``eval/`` (the harness's full report), ``train/<method>/``
(meta-training logs and curves) and, for the tiny model, ``base/`` (the pretrained base) and
``pretrain.png``.
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
from metalearn.base import byte_tokenizer, tiny_llama
from metalearn.tasks import load

METHODS = ("maml", "fomaml", "reptile", "multitask")


# ---------------------------------------------------------------- the stand-in foundation model


def pretrain_tiny_base(family, path: str, steps: int, hidden: int, layers: int, batch: int, lr: float, seed: int,
                       max_length: int) -> dict:
    """Plain causal-LM training of a whole tiny Llama on ``prompt + completion`` strings of train tasks.

    The strings come only from the family's train split (for text_rules: train rule instances), so the
    held-out test rules stay unseen. The model and the byte tokenizer are saved to ``path``.
    """
    tok = byte_tokenizer()
    model = tiny_llama(vocab_size=128, hidden_size=hidden, layers=layers, heads=4, seed=seed)
    model.set_attn_implementation("sdpa")  # faster for plain training; the saved config does not keep it
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    rng = np.random.default_rng(seed + 7)
    losses, start = [], time.time()
    for step in range(steps):
        rows: list[str] = []
        while len(rows) < batch:
            task = family.sample("train", rng)
            for part in (task.support, task.query):
                rows += [p + c for p, c in zip(part["prompt"], part["completion"])]
        ids = [([tok.bos_token_id] + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:max_length]
               for r in rows[:batch]]
        width = max(len(r) for r in ids)
        x = torch.full((len(ids), width), tok.pad_token_id)  # (batch, seq)
        labels = torch.full((len(ids), width), -100)
        for i, r in enumerate(ids):
            x[i, :len(r)] = torch.tensor(r)
            labels[i, :len(r)] = torch.tensor(r)
        loss = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return {"steps": steps, "seconds": time.time() - start, "losses": losses,
            "params": sum(p.numel() for p in model.parameters()), "hidden": hidden, "layers": layers}


# ---------------------------------------------------------------- meta-training and evaluation


def fit_all(args, family, base_path: str) -> tuple[dict, dict]:
    """One Learner per method on the same frozen (NF4) base, LoRA + soft prompt."""
    common = dict(model_name=base_path, quantization=args.quantization, lora_r=args.lora_r,
                  target_modules=args.target_modules, prompt_tokens=args.prompt_tokens, inner_lr=args.inner_lr,
                  inner_optimizer=args.inner_optimizer, meta_batch=args.meta_batch, meta_lr=args.meta_lr,
                  outer_schedule="cosine", seed=args.seed, max_length=args.max_length)
    learners, seconds = {}, {}
    for method in args.methods:
        kw = dict(common, method=method, meta_steps=args.meta_steps,
                  inner_steps=1 if method == "multitask" else args.inner_steps)
        if method == "maml" and args.truncate:
            kw.update(inner_order="truncated", inner_truncate=args.truncate)
        start = time.time()
        learners[method] = metalearn.fit(family, progress=not args.quiet,
                                         output_dir=os.path.join(args.output_dir, "train", method), **kw)
        seconds[method] = time.time() - start
        tail = np.mean([r["query_loss"] for r in learners[method].history[-20:]])
        print(f"[train] {method}: {args.meta_steps} meta-steps in {seconds[method]:.0f}s, "
              f"last train query NLL {tail:.3f}", flush=True)
    return learners, seconds


def table(results, metrics: list[str], steps: list[int], title: str) -> str:
    """One row per method, columns metric x steps, mean ± 95% CI."""
    methods = results.methods
    cols = [(m, s) for m in metrics for s in steps]
    lines = [title, "", "| method | " + " | ".join(f"{m} @{s}" for m, s in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in methods:
        cells = []
        for metric, s in cols:
            try:
                mean, ci = results.score(name, metric, s)
            except KeyError:
                cells.append("—")
                continue
            cells.append(f"{mean:.3f} ± {ci:.3f}" if not math.isnan(ci) else f"{mean:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path: str, pretrain: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results.settings["steps"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("exact_match", "nll")):
        for name in results.methods:
            pts = [results.score(name, metric, s) for s in steps]
            y = np.array([p[0] for p in pts])
            ci = np.nan_to_num(np.array([p[1] for p in pts]))
            ax.plot(steps, y, "o-" if name != "zero_shot" else "--", label=name)
            ax.fill_between(steps, y - ci, y + ci, alpha=0.15)
        ax.set_xlabel("inner steps on the support set")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} on held-out tasks (95% CI)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if pretrain:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(pretrain["losses"])
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("causal-LM loss (all tokens)")
        ax.set_title("tiny base pretraining")
        fig.tight_layout()
        fig.savefig(os.path.join(os.path.dirname(path), "pretrain.png"), dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------- command line


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets everywhere")
    p.add_argument("--family", default="text_rules", help="a built-in spec (text_rules, instruction_induction, "
                   "dialogsum, ...) or a YAML spec path")
    p.add_argument("--model", default=None, help="a causal LM by name or path; default: pretrain a tiny Llama here")
    p.add_argument("--output-dir", default=None, help="default runs/<family>")
    p.add_argument("--quantization", default="nf4", choices=["nf4", "int8", "none"])
    p.add_argument("--methods", default="fomaml,multitask", help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--pretrain-steps", type=int, default=None, help="tiny base only (default 1500; quick 60)")
    p.add_argument("--hidden", type=int, default=64, help="tiny base width")
    p.add_argument("--layers", type=int, default=2, help="tiny base depth")
    p.add_argument("--lora-r", type=int, default=4)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--prompt-tokens", type=int, default=4)
    p.add_argument("--inner-steps", type=int, default=5, help="inner steps in meta-training")
    p.add_argument("--inner-lr", type=float, default=1e-2)
    p.add_argument("--inner-optimizer", default="adam", choices=["sgd", "adam"])
    p.add_argument("--truncate", type=int, default=0, help="maml only: backpropagate through the last T steps")
    p.add_argument("--meta-steps", type=int, default=None, help="default 150; quick 4")
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--meta-lr", type=float, default=3e-3)
    p.add_argument("--episodes", type=int, default=None, help="test episodes (default 100; quick 4)")
    p.add_argument("--steps", default=None, help="inner step counts to score (default 0,1,2,5,10; quick 0,1,2)")
    p.add_argument("--lr-grid", default="0.3,1,3", help="multipliers of inner_lr tried on val tasks ('' = none)")
    p.add_argument("--val-episodes", type=int, default=None, help="val tasks for the lr search (default 8; quick 2)")
    p.add_argument("--max-length", type=int, default=128, help="token budget per example")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice; tiny models gain "
                   "nothing from more, and oversubscribed cores slow everything down)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    args.target_modules = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    args.quantization = None if args.quantization == "none" else args.quantization
    q = args.quick
    defaults = dict(pretrain_steps=(60, 1500), meta_steps=(4, 150), episodes=(4, 100), val_episodes=(2, 8))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.steps = [int(s) for s in (args.steps or ("0,1,2" if q else "0,1,2,5,10")).split(",")]
    args.lr_grid = [float(g) for g in args.lr_grid.split(",") if g.strip()] or None
    args.output_dir = args.output_dir or os.path.join("runs", os.path.basename(str(args.family)).split(".")[0])
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    family = load(args.family)
    pretrain = None
    if args.model is None:
        base_path = os.path.join(args.output_dir, "base")
        print(f"[base] no --model: pretraining a tiny Llama ({args.hidden}d x {args.layers} layers, byte tokenizer) "
              f"on {args.family} train tasks for {args.pretrain_steps} steps; it stands in for a pretrained "
              "foundation model", flush=True)
        pretrain = pretrain_tiny_base(family, base_path, args.pretrain_steps, args.hidden, args.layers, batch=64,
                                      lr=3e-3, seed=args.seed, max_length=args.max_length)
        print(f"[base] {pretrain['params']:,} parameters, {pretrain['seconds']:.0f}s, loss "
              f"{np.mean(pretrain['losses'][:10]):.2f} -> {np.mean(pretrain['losses'][-50:]):.2f}; "
              f"reloading it frozen in {args.quantization or 'full precision'}", flush=True)
    else:
        base_path = args.model
    learners, train_seconds = fit_all(args, family, base_path)
    t0 = time.time()
    results = metalearn.evaluate(learners, family, baselines=["random_init", "zero_shot"], steps=args.steps,
                                 episodes=args.episodes, seed=args.seed, lr_grid=args.lr_grid,
                                 val_episodes=args.val_episodes, progress=not args.quiet,
                                 output_dir=os.path.join(args.output_dir, "eval"))
    eval_seconds = time.time() - t0
    plot(results, os.path.join(args.output_dir, "steps.png"), pretrain)
    wall = time.time() - start
    command = " ".join(["python examples/text_rules.py"] + (sys.argv[1:] if argv is None else list(argv)))
    base_text = (f"a tiny Llama ({pretrain['params']:,} parameters, {args.hidden}d x {args.layers} layers, byte "
                 f"tokenizer) pretrained here for {pretrain['steps']} steps ({pretrain['seconds']:.0f}s) of plain "
                 f"causal-LM training on strings from the family's train tasks only, standing in for a pretrained "
                 f"foundation model" if pretrain else f"`{args.model}`")
    header = [
        f"Command: `{command}`", "",
        f"Family: `{args.family}` ({family!r}). Base: {base_text}; frozen, "
        f"{'NF4 (4-bit, double quantization)' if args.quantization == 'nf4' else args.quantization or 'full precision'}. "
        f"Adapted: LoRA r={args.lora_r} on {', '.join(args.target_modules)} + a {args.prompt_tokens}-token soft prompt. "
        f"Meta-training: {args.meta_steps} meta-steps x {args.meta_batch} tasks, meta lr {args.meta_lr} (cosine), "
        f"inner loop {args.inner_steps} {args.inner_optimizer} steps at lr {args.inner_lr} "
        f"({', '.join(f'{m} {s:.0f}s' for m, s in train_seconds.items())}). "
        f"Evaluation: {args.episodes} held-out test tasks, the same for every method; inner lr per method and step "
        + (f"count picked from x{args.lr_grid} on {args.val_episodes} val tasks" if args.lr_grid else "count fixed")
        + f"; greedy decoding. Evaluation {eval_seconds:.0f}s, wall time {wall / 60:.1f} min.", ""]
    metrics = ["exact_match", "rougeL", "nll"]
    text = "\n".join(header + [table(results, metrics, args.steps,
                                     f"### Held-out {args.family} tasks: exact match, ROUGE-L (higher is better), "
                                     f"completion NLL per token (lower is better) after N inner steps; mean ± 95% CI "
                                     f"over {args.episodes} episodes"), ""])
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(text)
    payload = {"settings": {k: v for k, v in vars(args).items()}, "train_seconds": train_seconds,
               "eval_seconds": eval_seconds, "wall_seconds": wall,
               "pretrain": {k: v for k, v in (pretrain or {}).items() if k != "losses"},
               "scores": {f"{m}/{metric}/steps={s}": results.score(m, metric, s)
                          for m in results.methods for metric in metrics for s in args.steps}}
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    print(text)
    return payload


if __name__ == "__main__":
    main()
