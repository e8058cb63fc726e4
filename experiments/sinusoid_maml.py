"""Sinusoid regression, Finn et al. 2017 (MAML), Table 2 / Fig. 3, reproduced on a CPU budget.

A 1-40-40-1 ReLU MLP is meta-trained on sine tasks ``y = A sin(x - phase)`` (A ~ U[0.1, 5],
phase ~ U[0, pi], x ~ U[-5, 5]) with K = 10 support points, inner step size alpha = 0.01 and MSE, by
MAML, first-order MAML, Reptile and Meta-SGD, next to the paper's "pretrained on all tasks" baseline
(``method="multitask"``: one network trained on every task jointly, then fine-tuned like the others) and a
randomly initialized network. Every method is then adapted on the same held-out test tasks with K = 5 and
K = 10 support points, plain SGD at the paper's fixed alpha = 0.01 (no learning-rate search; Meta-SGD uses
its learned step sizes), and scored by MSE on 100 query points per task after 0, 1, 5 and 10 steps.

    python -m experiments.sinusoid_maml              # the full run (about 10-15 minutes on 1 CPU core)
    python -m experiments.sinusoid_maml --quick      # a smoke run in well under a minute
    python -m experiments.sinusoid_maml --lr-search  # also report every method with the val-split lr search

Writes into ``--output-dir`` (default ``runs/sinusoid_maml``): ``table.md`` (the paper-style table),
``results.json`` (the same numbers), ``fig3.png`` (true sine, K support points and the MAML / pretrained
predictions after 0, 1 and 10 steps on one test task), ``eval/`` (the harness's full report:
``results.md``, CSVs, ``steps.png``, ``shots.png``) and ``train/<method>/`` (log and training curve).

The paper meta-trains for 70,000 iterations with meta-batch 25 (Adam, meta lr 1e-3). A 15-minute CPU
budget allows a few thousand, so the defaults use a larger meta learning rate (1e-2) with a cosine decay
and clip the meta-gradient norm at 1 (without the clip, a MAML init trained this fast adapts well in 1-5
steps but overshoots by 10 steps at alpha = 0.01).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from torch import nn

import metalearn
from experiments import common
from metalearn.tasks import Sinusoid

PAPER_K5 = {"maml": (0.67, 0.38, 0.35), "multitask": (2.41, 2.23, 2.19)}
"""Finn et al. 2017, sinusoid, K = 5: MSE after 1, 5 and 10 gradient steps (fixed alpha = 0.01)."""

METHODS = ("maml", "fomaml", "reptile", "metasgd", "multitask")
LABELS = {"maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile", "metasgd": "Meta-SGD",
          "multitask": "pretrained on all tasks (multitask)", "random_init": "random init"}
ALPHA = 0.01  # the paper's inner step size, for training and evaluation
BUDGETS = dict(meta_steps=(100, 4000), multitask_steps=(50, 1000), episodes=(40, 600))


def _num(value: float):
    """JSON-safe: NaN and infinities (a diverged inner loop) become null."""
    return value if math.isfinite(value) else None


def mlp(seed: int) -> nn.Module:
    """The paper's network: 1-40-40-1 with ReLU."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def settings(args: argparse.Namespace) -> dict:
    """Training settings per method (the same for all but the inner loop Reptile needs)."""
    shared = dict(inner_lr=ALPHA, meta_batch=args.meta_batch, meta_lr=args.meta_lr, outer_schedule="cosine",
                  outer_clip_norm=args.clip_norm, seed=args.seed)
    out = {}
    for method in args.methods:
        steps = args.meta_steps
        inner_steps = args.inner_steps
        if method == "reptile":
            inner_steps = args.reptile_inner_steps  # Reptile needs > 1 step to differ from joint training
        if method == "multitask":
            inner_steps = 1  # no inner loop in training; 1 keeps the step size alpha for evaluation
            steps = args.multitask_steps  # joint regression converges fast and cannot be task-batched
        out[method] = dict(shared, method=method, inner_steps=inner_steps, meta_steps=steps)
    return out


def train(args: argparse.Namespace, family: Sinusoid) -> tuple[dict, dict]:
    return common.fit_each(family, settings(args), args, tail=50, model=lambda: mlp(args.seed))


def paper_table(results, methods: list[str], shots: list[int], steps: list[int], title: str) -> str:
    """Methods x (K, steps) MSE with 95% intervals, plus the paper's rows for reference."""
    cols = [(k, s) for k in shots for s in steps]
    head = "| method | " + " | ".join(f"K={k}, {s} step{'s' if s != 1 else ''}" for k, s in cols) + " |"
    lines = [title, "", head, "|---" * (len(cols) + 1) + "|"]
    finite = lambda v: math.isfinite(v) and v < 1e3  # noqa: E731
    best = {c: min([v for m in methods if finite(v := results.score(m, "mse", c[1], c[0])[0])], default=None)
            for c in cols}
    for m in methods:
        cells = []
        for k, s in cols:
            mean, ci = results.score(m, "mse", s, k)
            cell = f"{mean:.3f} ± {ci:.3f}" if finite(mean) else "diverged"
            cells.append(f"**{cell}**" if mean == best[(k, s)] else cell)
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    for m, values in PAPER_K5.items():
        paper = dict(zip((1, 5, 10), values))
        cells = [f"{paper[s]:.2f}" if k == 5 and s in paper else "" for k, s in cols]
        lines.append(f"| *paper: {LABELS[m]}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fig3(learners: dict, family: Sinusoid, path: str, seed: int, k: int = 5) -> None:
    """Finn et al. Fig. 3: one test task, its K points, MAML vs pretrained after 0, 1 and 10 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metalearn.eval import family_for_shots

    task = family_for_shots(family, k).sample("test", np.random.default_rng(seed + 123))
    grid = torch.linspace(-5, 5, 200).unsqueeze(1)
    a, p = task.meta["amplitude"], task.meta["phase"]
    shown = [m for m in ("maml", "multitask") if m in learners]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.8), squeeze=False)
    for ax, name in zip(axes[0], shown):
        ax.plot(grid, a * torch.sin(grid - p), "r-", lw=2, label="ground truth")
        for steps, style in ((0, ":"), (1, "--"), (10, "-")):
            adapted = learners[name].adapt(task.support, steps=steps)
            pred = adapted.predict({"x": grid, "y": torch.zeros_like(grid)})
            ax.plot(grid, pred, style, color="tab:green" if steps else "tab:blue",
                    alpha=1.0 if steps == 10 else 0.7, label=f"after {steps} grad step{'s' if steps != 1 else ''}"
                    if steps else "pre-update")
        ax.plot(task.support["x"], task.support["y"], "^", color="purple", ms=9, label=f"{k} points used for grad")
        ax.set_title(f"{LABELS[name].split(' (')[0]}, K={k}")
        ax.set_ylim(-6, 6)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__, show_defaults=True)
    common.add_run_arguments(p, "runs/sinusoid_maml", "a smoke run: few meta-steps and episodes",
                             threads="torch CPU threads (a tiny MLP gains nothing from more)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--meta-steps", type=int, default=None,
                   help=f"meta-iterations per method ({common.budget_help(BUDGETS, 'meta_steps')})")
    p.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-step (paper: 25)")
    p.add_argument("--meta-lr", type=float, default=1e-2, help="Adam meta lr, cosine-decayed")
    p.add_argument("--clip-norm", type=float, default=1.0,
                   help="meta-gradient norm clip (0: none); without it a 1-step init overshoots at 10 steps")
    p.add_argument("--multitask-steps", type=int, default=None,
                   help="steps of the pretrained-on-all-tasks baseline "
                   f"({common.budget_help(BUDGETS, 'multitask_steps')})")
    p.add_argument("--inner-steps", type=int, default=1, help="inner steps in meta-training (paper: 1)")
    p.add_argument("--reptile-inner-steps", type=int, default=5, help="Reptile's inner steps in training")
    p.add_argument("--episodes", type=int, default=None,
                   help=f"test episodes per K ({common.budget_help(BUDGETS, 'episodes')})")
    p.add_argument("--query", type=int, default=100, help="query points per test task for the MSE")
    p.add_argument("--lr-search", action="store_true", help="also evaluate with the val-split inner-lr search")
    args = p.parse_args(argv)
    args.argv = common.argv_of(argv)
    args.methods = common.choose(p, args.methods, METHODS, "method")
    common.fill_budgets(args, BUDGETS)
    args.clip_norm = args.clip_norm or None
    return args


def evaluate(args: argparse.Namespace, learners: dict, family: Sinusoid) -> tuple[list[str], dict]:
    """Every method on the same test tasks at K = 5 and 10: at the paper's fixed alpha (and with --lr-search, with
    the val-split lr search); the tables and the scores."""
    shots, steps = [5, 10], [0, 1, 5, 10]
    evals = {"fixed_lr": dict(lr_grid=None)}
    if args.lr_search:
        evals["lr_search"] = dict(val_episodes=32)
    tables, summaries = [], {}
    for name, extra in evals.items():
        t0 = time.time()
        res = metalearn.evaluate(learners, family, baselines=["random_init"], steps=steps, shots=shots,
                                 episodes=args.episodes, seed=args.seed, progress=not args.quiet,
                                 output_dir=os.path.join(args.output_dir, "eval" if name == "fixed_lr" else
                                                         "eval_lr_search"), **extra)
        methods = list(learners) + ["random_init"]
        what = ("fixed inner step size alpha = 0.01 for every method (Meta-SGD: its learned step sizes), "
                "no learning-rate search" if name == "fixed_lr" else
                "inner learning rate per method and step count chosen on 32 val tasks (grid x0.1..x10)")
        diverged = sorted({LABELS[m] for m in methods for k in shots for s in steps
                           if not (math.isfinite(res.score(m, "mse", s, k)[0]) and res.score(m, "mse", s, k)[0] < 1e3)})
        note = (f"\n\n*diverged*: mean MSE above 1e3 or not finite ({', '.join(diverged)}). An init (and Meta-SGD's "
                "learned step sizes) meta-trained for a few inner steps can overshoot when adapted for many more."
                if diverged else "")
        tables.append(paper_table(res, methods, shots, [1, 5, 10],
                                  f"### Sinusoid MSE (lower is better), {what}; mean ± 95% CI over "
                                  f"{args.episodes} test tasks") + note)
        summaries[name] = {f"{m}/K={k}/steps={s}": res.score(m, "mse", s, k) for m in methods for k in shots
                           for s in steps}
        print(f"[eval] {name}: {time.time() - t0:.0f}s", flush=True)
    return tables, summaries


def main(argv=None) -> dict:
    args = parse(argv)
    start = common.setup(args)
    train_family = Sinusoid(k_shot=10, q_query=10, seed=args.seed)  # the paper meta-trains with K = 10
    test_family = Sinusoid(k_shot=10, q_query=args.query, seed=args.seed)
    learners, train_times = train(args, train_family)
    tables, summaries = evaluate(args, learners, test_family)
    fig3(learners, test_family, os.path.join(args.output_dir, "fig3.png"), args.seed)
    wall = time.time() - start
    cfg = settings(args)
    header = [f"Command: `{common.command('sinusoid_maml', args.argv)}`",
              "",
              f"Meta-training: K = 10, alpha = {ALPHA}, MSE, meta-batch {args.meta_batch}, Adam meta lr {args.meta_lr} "
              f"with cosine decay, meta-gradient norm clipped at {args.clip_norm}, {args.meta_steps} "
              f"meta-steps per method (pretrained baseline: {args.multitask_steps}; paper: 70,000); inner steps in "
              f"training: {args.inner_steps} (Reptile: "
              f"{cfg.get('reptile', {}).get('inner_steps', args.reptile_inner_steps)}). "
              f"Test: {args.episodes} tasks per K, the same tasks for every method, "
              f"{args.query} query points each. Wall time {wall / 60:.1f} min "
              f"(training: " + ", ".join(f"{m} {t:.0f}s" for m, t in train_times.items()) + ").", ""]
    text = "\n".join(header + ["\n\n".join(tables), ""])
    payload = {"settings": {k: v for k, v in vars(args).items()}, "train": cfg, "train_seconds": train_times,
               "wall_seconds": wall, "paper_k5": PAPER_K5,
               "mse": {name: {key: {"mean": _num(m), "ci95": _num(c)} for key, (m, c) in s.items()}
                       for name, s in summaries.items()}}
    return common.write_report(args.output_dir, text, payload)


if __name__ == "__main__":
    main()
