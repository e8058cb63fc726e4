"""Meta-learned LoRA + soft-prompt init for a causal LM on a generative family, vs a multi-task init,
random-init PEFT, the frozen base and in-context examples, on a frozen NF4 (4-bit) base.

Default: the procedural ``substitution`` family (each task is a new letter table, a Caesar shift, affine
map or permutation of ``abcdef``, applied letter by letter: ``abcd=`` -> ``cafb``; 8 support examples hold
every letter, so they reveal the table; the test tables never occur in training) and a tiny Llama with a
byte-level tokenizer. No pretrained LM is reachable offline, so the script first **pretrains the tiny
model** (``metalearn.pretrain``) on the family's *train* tables only, each example preceded by its table
written as a 6-token code: the base learns to apply a table it is told. Few-shot tasks never tell it; the
adapters must find the table from the 8 examples. The base is cached by its config and family
(``--cache-dir``), saved with ``save_pretrained`` and reloaded frozen in NF4.

Then, on the frozen NF4 base with LoRA (q/v projections) and a 6-token soft prompt (in front of BOS, where
the code sat in pretraining):
* ``maml`` / ``fomaml`` second- / first-order MAML (``--methods`` takes any of maml, fomaml, reptile, multitask),
* ``multitask`` one LoRA + prompt trained jointly on all train tasks (the transfer baseline),
* ``random_init`` a fresh peft init (LoRA B = 0, random prompt) fine-tuned with the same inner loop,
* ``zero_shot`` the frozen base, no adapters; ``in_context`` the frozen base with the 8 examples in its prompt,
are adapted on the support set of held-out test tasks and scored by greedy-decoding exact match,
character-level ROUGE-L (partial credit) and completion NLL after 0, 1, 2, 5 and 10 inner steps (inner lr per method
and step count picked on val tasks, from a small grid). The table ends with paired differences maml - multitask and
multitask - random_init (the issue-16 goal).

    python -m experiments.text_rules                 # the full run on CPU (about 5 minutes, pretraining included)
    python -m experiments.text_rules --quick         # a smoke run (about a minute; the base is cached)
    python -m experiments.text_rules --family text_rules   # the older rule family (reverse, sort, ...)
    python -m experiments.text_rules --quick --family instruction_induction   # the path on a real family

With a GPU and the Hugging Face Hub, any causal LM by name (no pretraining step then)::

    python -m experiments.text_rules --model Qwen/Qwen2.5-0.5B --family instruction_induction \\
        --meta-steps 500 --meta-batch 4 --episodes 100
    python -m experiments.text_rules --model Qwen/Qwen2.5-0.5B --family dialogsum --max-length 512

Writes into ``--output-dir`` (default ``runs/<family>``): ``table.md``, ``results.json``, ``steps.png``
(exact match, character-level ROUGE-L and NLL vs inner steps), ``eval/`` (the harness's full report),
``train/<method>/`` (meta-training logs and curves) and, for the tiny model, ``pretrain.png``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import metalearn
from experiments import common
from metalearn.eval.metrics import paired_ci
from metalearn.pretrain import table_accuracy
from metalearn.tasks import load

METHODS = ("maml", "fomaml", "reptile", "multitask")
BUDGETS = dict(pretrain_steps=(1200, 3000), meta_steps=(60, 300), episodes=(8, 100), val_episodes=(2, 8))
STEPS = ("0,5,10", "0,1,2,5,10")
"""Inner step counts scored: (--quick, full)."""


# ---------------------------------------------------------------- meta-training and evaluation


def fit_all(args, family, base_path: str) -> tuple[dict, dict]:
    """One Learner per method on the same frozen (NF4) base, LoRA + soft prompt."""
    shared = dict(model_name=base_path, quantization=args.quantization, lora_r=args.lora_r,
                  target_modules=args.target_modules, prompt_tokens=args.prompt_tokens, inner_lr=args.inner_lr,
                  inner_optimizer=args.inner_optimizer, meta_batch=args.meta_batch, meta_lr=args.meta_lr,
                  outer_schedule="cosine", seed=args.seed, max_length=args.max_length)
    settings = {}
    for method in args.methods:
        settings[method] = dict(shared, method=method, meta_steps=args.meta_steps,
                                inner_steps=1 if method == "multitask" else args.inner_steps)
        if method == "maml" and args.truncate:
            settings[method].update(inner_order="truncated", inner_truncate=args.truncate)
    return common.fit_each(family, settings, args)


def table(results, metrics: list[str], steps: list[int], title: str) -> str:
    """One row per method, columns metric x steps, mean ± 95% CI."""
    methods = results.methods
    cols = [(m, s) for m in metrics for s in steps]
    lines = [title, "", "| method | " + " | ".join(f"{m} @{s}" for m, s in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in methods:
        cells = []
        for metric, s in cols:
            try:
                cells.append(common.mean_ci(*results.score(name, metric, s)))
            except KeyError:
                cells.append("—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(results, a: str, b: str, metric: str, steps: int) -> tuple[float, float]:
    """Paired (mean, 95% half-width) of ``metric(a) - metric(b)`` over the same test episodes."""
    rows = {m: {r["episode"]: r[metric] for r in results.records if r["method"] == m and r["steps"] == steps}
            for m in (a, b)}
    episodes = sorted(set(rows[a]) & set(rows[b]))
    return paired_ci([rows[a][e] for e in episodes], [rows[b][e] for e in episodes])


def goal_table(results, steps: list[int], metric: str = "exact_match") -> str:
    """Paired differences meta-learned - multitask and multitask - random_init (issue 16's goal), per step count."""
    pairs = [(m, "multitask") for m in ("maml", "fomaml", "reptile") if m in results.methods]
    pairs += [("multitask", "random_init")] + [(m, "in_context") for m in ("maml", "fomaml") if m in results.methods]
    pairs = [(a, b) for a, b in pairs if a in results.methods and b in results.methods]
    lines = [f"### Paired differences in {metric} on the same episodes (mean ± 95% CI; > 0: the first is better)", "",
             "| difference | " + " | ".join(f"@{s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for a, b in pairs:
        cells = []
        for s in steps:
            mean, ci = paired(results, a, b, metric, s)
            mark = "**" if mean - ci > 0 else ""
            cells.append(f"{mark}{mean:+.3f} ± {ci:.3f}{mark}")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Bold: the interval excludes 0 in favour of the first."])


def plot(results, path: str, pretrain: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results.settings["steps"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, metric in zip(axes, ("exact_match", "rougeL_char", "nll")):
        for name in results.methods:
            pts = [results.score(name, metric, s) for s in steps]
            y = np.array([p[0] for p in pts])
            ci = np.nan_to_num(np.array([p[1] for p in pts]))
            ax.plot(steps, y, "o-" if name in results.settings["adapting"] else "--", label=name)
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
    p = common.parser(__doc__, show_defaults=True)
    common.add_run_arguments(p, None, "a smoke run: tiny budgets everywhere",
                             threads="torch CPU threads (0: torch's choice; tiny models gain nothing from more, and "
                             "oversubscribed cores slow everything down)")
    p.add_argument("--family", default="substitution", help="a built-in spec (substitution, text_rules, "
                   "instruction_induction, dialogsum, ...) or a YAML spec path")
    p.add_argument("--methods", default="maml,fomaml,multitask", help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--baselines", default="random_init,zero_shot,in_context", help="comma-separated harness baselines")
    p.add_argument("--cache-dir", default=None, help="where pretrained tiny bases are kept, keyed by config and "
                   "family (default $METALEARN_CACHE/bases or ~/.cache/metalearn/bases)")
    common.add_lm_arguments(p, BUDGETS, STEPS, lr_grid="0.3,1,3,10", quantizations=["nf4", "int8", "none"])
    p.add_argument("--lora-r", type=int, default=4)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--prompt-tokens", type=int, default=6)
    p.add_argument("--inner-lr", type=float, default=1e-2)
    p.add_argument("--truncate", type=int, default=0, help="maml only: backpropagate through the last T steps")
    args = p.parse_args(argv)
    args.argv = common.argv_of(argv)
    args.methods = common.choose(p, args.methods, METHODS, "method")
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    args.target_modules = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    common.resolve_lm_arguments(args, BUDGETS, STEPS)
    args.output_dir = args.output_dir or os.path.join("runs", os.path.basename(str(args.family)).split(".")[0])
    return args


def base(args, family) -> tuple[str, dict | None, dict]:
    """The frozen base's path (--model, or a tiny Llama pretrained here), its pretraining record and what it can do."""
    if args.model is not None:
        return args.model, None, {}
    print(f"[base] no --model: a tiny Llama ({args.hidden}d x {args.layers} layers, byte tokenizer) pretrained on "
          f"{args.family} train tasks for {args.pretrain_steps} steps (cached by config); it stands in for a "
          "pretrained foundation model", flush=True)
    base_path, pretrain = common.tiny_base(args, family, args.cache_dir)
    print(f"[base] {base_path}: {pretrain['params']:,} parameters, "
          f"{'loaded from the cache' if pretrain['cached'] else 'trained'} ({pretrain['seconds']:.0f}s of training), "
          f"loss {np.mean(pretrain['losses'][:10]):.2f} -> {np.mean(pretrain['losses'][-50:]):.2f}; reloading it "
          f"frozen in {args.quantization or 'full precision'}", flush=True)
    base_skill = {}
    if pretrain["table_codes"]:  # what the base can do when told the table, and when not
        n = max(args.episodes // 4, 2)
        base_skill = {"train, told the table": table_accuracy(base_path, family, "train", n, args.seed),
                      "test, told the table": table_accuracy(base_path, family, "test", n, args.seed),
                      "test, bare prompt": table_accuracy(base_path, family, "test", n, args.seed, codes=False)}
        print("[base] exact match " + ", ".join(f"{k}: {v:.3f}" for k, v in base_skill.items()), flush=True)
    return base_path, pretrain, base_skill


def header(args, family, pretrain: dict | None, base_skill: dict, seconds: dict) -> list[str]:
    """The table's preamble: the command, the family, the base, meta-training and evaluation settings and times."""
    base_text = (f"a tiny Llama ({pretrain['params']:,} parameters, {args.hidden}d x {args.layers} layers, byte "
                 f"tokenizer) pretrained here for {args.pretrain_steps} steps ({pretrain['seconds']:.0f}s"
                 f"{', loaded from the cache in this run' if pretrain['cached'] else ''}) of next-token training on "
                 f"the family's train tasks only"
                 + (", each example preceded by its table as a code; exact match of the base (greedy, "
                    + ", ".join(f"{k}: {v:.3f}" for k, v in base_skill.items()) + ")" if base_skill else "")
                 + ", standing in for a pretrained foundation model" if pretrain else f"`{args.model}`")
    quantization = ("NF4 (4-bit, double quantization)" if args.quantization == "nf4" else
                    args.quantization or "full precision")
    return [
        f"Command: `{common.command('text_rules', args.argv)}`", "",
        f"Family: `{args.family}` ({family!r}). Base: {base_text}; frozen, "
        f"{quantization}. Adapted: LoRA r={args.lora_r} on {', '.join(args.target_modules)} + a "
        f"{args.prompt_tokens}-token soft prompt. "
        f"Meta-training: {args.meta_steps} meta-steps x {args.meta_batch} tasks, meta lr {args.meta_lr} (cosine), "
        f"inner loop {args.inner_steps} {args.inner_optimizer} steps at lr {args.inner_lr} "
        f"({', '.join(f'{m} {s:.0f}s' for m, s in seconds['train'].items())}). "
        f"Evaluation: {args.episodes} held-out test tasks, the same for every method; inner lr per method and step "
        + (f"count picked from x{args.lr_grid} on {args.val_episodes} val tasks" if args.lr_grid else "count fixed")
        + f"; greedy decoding. Evaluation {seconds['eval']:.0f}s, wall time {seconds['wall'] / 60:.1f} min.", ""]


def main(argv=None) -> dict:
    args = parse(argv)
    start = common.setup(args)
    family = load(args.family)
    base_path, pretrain, base_skill = base(args, family)
    learners, train_seconds = fit_all(args, family, base_path)
    t0 = time.time()
    results = metalearn.evaluate(learners, family, baselines=args.baselines, steps=args.steps,
                                 episodes=args.episodes, seed=args.seed, lr_grid=args.lr_grid,
                                 val_episodes=args.val_episodes, progress=not args.quiet,
                                 output_dir=os.path.join(args.output_dir, "eval"))
    seconds = {"train": train_seconds, "eval": time.time() - t0}
    plot(results, os.path.join(args.output_dir, "steps.png"), pretrain)
    seconds["wall"] = time.time() - start
    metrics = ["exact_match", "rougeL_char", "nll"]
    text = "\n".join(header(args, family, pretrain, base_skill, seconds) + [
        table(results, metrics, args.steps, f"### Held-out {args.family} tasks: exact match, character-level "
              f"ROUGE-L (higher is better), completion NLL per token (lower is better) after N inner steps; mean ± "
              f"95% CI over {args.episodes} episodes"), "", goal_table(results, args.steps), ""])
    payload = {"settings": {k: v for k, v in vars(args).items()}, "train_seconds": train_seconds,
               "eval_seconds": seconds["eval"], "wall_seconds": seconds["wall"],
               "pretrain": {k: v for k, v in (pretrain or {}).items() if k != "losses"}, "base_skill": base_skill,
               "scores": {f"{m}/{metric}/steps={s}": results.score(m, metric, s)
                          for m in results.methods for metric in metrics for s in args.steps}}
    return common.write_report(args.output_dir, text, payload)


if __name__ == "__main__":
    main()
