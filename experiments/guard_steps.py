"""What the per-task guard's fold steps cost and decide: a saved learner's guard at several settings, any target.

``learner.adapt(support)`` guards a classification task at K >= 2 by adapting the meta-learned init on each of
its support folds and comparing it, on the held-out shots, with the frozen foundation
(``metalearn.guarded.decide``). Each fold costs an adaptation. With ``Recipe.guard_steps = 0`` the folds
score the init unadapted instead: one forward of the support set for all of them. This script measures
what that changes, on the test tasks of any target, near the learner's meta-training or far from it:

* ``unguarded``: ``adapt(support, guard=False)``, the saved recipe's steps and step size;
* ``frozen``: ``adapt(support, guard="foundation")``, the frozen encoder with the learner's prototype head;
* ``guard S:F``: each task adapted or kept frozen as ``guarded.decide`` at S fold steps and F folds says
  (``recipe``: the saved recipe's own guard). Its accuracy is the unguarded or the frozen one of that task,
  its seconds the guard's plus the path taken.
* ``reuse:F``: the saved recipe with ``Recipe.reuse_fold`` at F folds (``reuse``: 1), run as a user runs it
  (``adapt(support)``): a task the guard adapts keeps its first fold's adaptation, prototypes from all K shots,
  instead of adapting again. Its accuracy is its own (neither the unguarded nor the frozen one), its seconds
  the whole call's.
* ``pooled:M`` (needs ``recipe``): the recipe guard's verdict pooled over the first M tasks' folds
  (``eval.guard.pooled_verdict``, as ``decide_gated`` pools it; ``pooled``: over all of them). Those M tasks
  pay for their folds; when the verdict is clear the other tasks follow it with no folds, else each decides
  on its own, as ``setfit_compare --replay N --pooled M`` replays it.

Every row is paired, episode by episode, with the unguarded and the frozen rows. ``--reference DIR`` reads those
two rows from an earlier run of this script on the same learner, targets, settings and seed (only ``reuse`` rows
then: the others need both paths of every task); each task a ``reuse`` row keeps frozen must score exactly the
reference's frozen accuracy, else the episodes differ and the run stops.

    python -m experiments.guard_steps --learner runs/setfit_fewrel_5x5/5x5/learner \\
        --targets fewrel,huffpost --settings 5x5 --episodes 100 --guards recipe,0:2,0:5,pooled:30 --workers 2
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

import metalearn
from experiments import common
from metalearn.eval import metrics, sample_tasks
from metalearn.eval.guard import pooled_verdict
from metalearn.eval.workers import forked_map
from metalearn.guarded import decide
from metalearn.views import evaluation_mode

TARGETS = ("fewrel", "clinc150", "hwu64", "huffpost")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = common.parser(__doc__)
    common.add_run_arguments(p, "runs/guard_steps", "3 episodes per cell")
    p.add_argument("--learner", required=True, help="a saved learner with a recipe (e.g. setfit_compare's)")
    p.add_argument("--targets", default="fewrel", help=f"comma-separated, of {', '.join(TARGETS)} (test classes)")
    p.add_argument("--settings", default="5x5", help="NxK test settings, K >= 2")
    p.add_argument("--episodes", type=int, default=100, help="test episodes per target and setting")
    p.add_argument("--guards", default="recipe,0:2,0:5",
                   help="guard settings STEPS:FOLDS (FOLDS 'K': every shot), 'recipe' for the saved recipe's guard")
    p.add_argument("--workers", type=int, default=1, help="forked processes sharing the episodes")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="an earlier run of this script (same learner, targets, settings, seed, at least as many "
                   "episodes): its unguarded and frozen rows are paired with instead of recomputed (reuse rows only)")
    args = p.parse_args(common.argv_of(argv))
    targets = common.choose(p, args.targets, TARGETS, "target")
    settings = common.parse_settings(args.settings)
    if any(k < 2 for _, k in settings):
        p.error(f"--settings {args.settings}: the guard holds support shots out, so every K must be >= 2")
    if args.episodes < 2:
        p.error(f"--episodes {args.episodes} is invalid: give at least 2 (the intervals need them)")
    if not os.path.isfile(os.path.join(args.learner, "metalearn.json")):
        p.error(f"--learner {args.learner} holds no saved learner (metalearn.json); give a learner folder, "
                "e.g. runs/setfit_fewrel_5x5/5x5/learner")
    learner = metalearn.load(args.learner)
    if learner.recipe is None:
        p.error(f"--learner {args.learner} has no recipe: choose one first (metalearn.tune_recipe, then save)")
    guards, pools = _guards(p, args.guards, learner.recipe)
    if args.quick:
        args.episodes = 3
    reference = _reference(p, args, targets, settings, guards, pools) if args.reference else None
    start = common.setup(args)
    rows = []
    for name in targets:
        for n_way, k_shot in settings:
            family = common.target_spec(name, n_way=n_way, k_shot=k_shot, q_query=5)
            tasks = sample_tasks(family, "test", args.episodes, args.seed)
            label = f"{name} {n_way}-way {k_shot}-shot"
            rows += cell(learner, tasks, guards, label, args, pools, reference and reference[label])
    text = report(rows, learner.recipe, common.argv_of(argv), time.time() - start)
    return common.write_report(args.output_dir, text, {"rows": rows, "argv": common.argv_of(argv),
                                                         "recipe": learner.recipe.to_dict()})


def _reference(p, args, targets, settings, guards, pools) -> dict[str, dict[str, dict]]:
    """The unguarded and frozen rows of ``--reference``'s run, per cell, after checking it ran the same tasks."""
    path = os.path.join(args.reference, "results.json")
    if not os.path.isfile(path):
        p.error(f"--reference {args.reference}: no results.json there; give an earlier guard_steps output folder")
    if pools or any(not label.startswith("reuse") for label, _, _ in guards):
        p.error("--reference pairs reuse rows only (the other guards need both paths of every task): give "
                "--guards reuse or reuse:F")
    run = common.read_json(path)
    then = common.argv_of(run["argv"])
    for option, now in (("--learner", args.learner), ("--seed", str(args.seed))):
        if (common.option(then, option) or ("0" if option == "--seed" else None)) != now:
            p.error(f"--reference {args.reference} ran {option} {common.option(then, option)}, not {now}: pair only with a "
                    "run on the same learner and seed")
    rows = {}
    for name in targets:
        for n_way, k_shot in settings:
            label = f"{name} {n_way}-way {k_shot}-shot"
            got = {r["method"]: r for r in run["rows"] if r["cell"] == label and r["method"] in ("unguarded", "frozen")}
            if len(got) < 2 or got["unguarded"]["n"] < args.episodes:
                p.error(f"--reference {args.reference} has no unguarded and frozen rows of {label} over at least "
                        f"{args.episodes} episodes")
            rows[label] = got
    return rows


def _guards(p, text: str, recipe) -> tuple[list[tuple[str, int, Optional[int]]], list[int]]:
    """'recipe,0:2,0:K,reuse,pooled:30' -> ([(label, steps, folds)], [30]); folds None is K, pooled 0 every task."""
    out, pools = [], []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        if item == "reuse" or item.startswith("reuse:"):
            f = item.partition(":")[2] or "1"
            if not f.isdigit() or int(f) < 1:
                p.error(f"--guards item {item!r} is invalid: reuse:F needs F >= 1 folds (reuse: one)")
            steps = recipe.steps if recipe.guard_steps in (None, 0) else recipe.guard_steps
            out.append((f"reuse {steps}:{f}", steps, int(f)))
            continue
        if item == "pooled" or item.startswith("pooled:"):
            m = item.partition(":")[2]
            if m and (not m.isdigit() or int(m) < 2):
                p.error(f"--guards item {item!r} is invalid: pool over M >= 2 tasks (pooled:30), or all (pooled)")
            pools.append(int(m or 0))
            continue
        if item == "recipe":
            steps = recipe.steps if recipe.guard_steps is None else recipe.guard_steps
            out.append((f"guard {steps}:{recipe.folds or 'K'} (recipe)", steps, recipe.folds))
            continue
        try:
            steps, folds = item.split(":")
            steps, folds = int(steps), None if folds == "K" else int(folds)
        except ValueError:
            p.error(f"--guards item {item!r} is not STEPS:FOLDS (e.g. 0:2, 10:K), 'recipe' or 'reuse:F'")
        if steps < 0 or folds is not None and folds < 1:
            p.error(f"--guards item {item!r} is invalid: steps >= 0, folds >= 1 (or K)")
        out.append((f"guard {steps}:{folds or 'K'}", steps, folds))
    if not out:
        p.error("--guards is empty: give at least one guard setting, e.g. recipe,0:2")
    if pools and not any(label.endswith("(recipe)") for label, _, _ in out):
        p.error("--guards: pooled:M pools the recipe guard's folds; add 'recipe' (e.g. recipe,pooled:30)")
    return out, pools


def cell(learner, tasks, guards, label: str, args, pools: Sequence[int] = (),
         reference: Optional[dict] = None) -> list[dict]:
    """Every row on one target's test tasks: per-episode accuracy and seconds, paired differences."""
    reusing = {name: _reusing(learner, steps, folds) for name, steps, folds in guards if name.startswith("reuse")}

    def one(task) -> dict:
        reused = {}
        for name, view in reusing.items():
            begin = time.perf_counter()
            adapted = view.adapt(task.support)
            acc = metrics.accuracy(adapted.predict(task.query).cpu().numpy(), np.asarray(task.query["label"]))
            reused[name] = (acc, time.perf_counter() - begin, adapted.use, adapted.decision)
        if reference is not None:
            return reused
        start = time.perf_counter()
        meta = metrics.accuracy(learner.adapt(task.support, guard=False).predict(task.query).cpu().numpy(),
                                np.asarray(task.query["label"]))
        mid = time.perf_counter()
        frozen = metrics.accuracy(learner.adapt(task.support, guard="foundation").predict(task.query).cpu().numpy(),
                                  np.asarray(task.query["label"]))
        out = {"unguarded": (meta, mid - start), "frozen": (frozen, time.perf_counter() - mid)}
        for name, steps, folds in guards:
            if name in reusing:
                continue
            begin = time.perf_counter()
            decision = decide(learner, task, steps=steps, scale=learner.recipe.scale, folds=folds,
                              margin=learner.recipe.margin)
            path = out["unguarded" if decision["use"] == "meta" else "frozen"]
            out[name] = (path[0], time.perf_counter() - begin + path[1], decision["use"], decision)
        return {**out, **reused}

    with evaluation_mode([learner]):
        done = list(tqdm(forked_map(one, list(tasks), args.workers), total=len(tasks), desc=label,
                         disable=args.quiet))
    if reference is not None:
        for i, d in enumerate(done):
            d["unguarded"], d["frozen"] = ((reference[m]["per_episode"][i], reference[m]["seconds"], m)
                                           for m in ("unguarded", "frozen"))
            for name in reusing:
                if d[name][2] == "foundation" and d[name][0] != d["frozen"][0]:
                    raise SystemExit(f"--reference {args.reference}: episode {i} kept frozen scores {d[name][0]}, the "
                                     f"reference's frozen row {d['frozen'][0]}: not the same tasks")
        done = [{m: d[m] for m in ("unguarded", "frozen", *reusing)} for d in done]
    verdicts = {}
    recipe = next((name for name, _, _ in guards if name.endswith("(recipe)")), None)
    for m in pools:
        name = f"pooled:{m}" if m else "pooled"
        verdicts[name] = _pool(done, recipe, min(m or len(done), len(done)), learner.recipe.margin, name)
    acc = {m: [d[m][0] for d in done] for m in done[0]}
    rows = []
    for m in done[0]:
        mean, ci = metrics.mean_ci(acc[m])
        rows.append({"cell": label, "method": m, "accuracy": mean, "ci95": ci, "n": len(done),
                     "per_episode": acc[m], "seconds": float(np.mean([d[m][1] for d in done])),
                     "kept_frozen": sum(d[m][2] == "foundation" for d in done) if m not in ("unguarded", "frozen")
                     else None,
                     "minus_unguarded": metrics.paired_ci(acc[m], acc["unguarded"]),
                     "minus_frozen": metrics.paired_ci(acc[m], acc["frozen"]),
                     **({"verdict": verdicts[m]} if m in verdicts else {})})
    return rows


def _reusing(learner, steps: int, folds: int):
    """A view of ``learner`` whose recipe guards with ``folds`` folds of ``steps`` steps and reuses the first."""
    view = copy.copy(learner)
    view.recipe = dataclasses.replace(learner.recipe, folds=folds, guard_steps=steps, reuse_fold=True)
    return view


def _pool(done: list[dict], recipe: str, m: int, margin: float, name: str) -> dict:
    """Adds row ``name`` to every task of ``done``: the recipe guard's verdict pooled over the first ``m`` tasks.

    The first ``m`` tasks paid for their folds (the recipe guard's seconds); when the verdict is clear every
    task takes its path, and the others pay only for that path; when it is not, every task keeps its own
    decision (the recipe guard's row). Returns the verdict.
    """
    verdict = pooled_verdict([d[recipe][3] for d in done[:m]], margin)
    for i, d in enumerate(done):
        own = d[recipe]
        if verdict["use"] == "per task":
            d[name] = own
            continue
        path = d["unguarded" if verdict["use"] == "meta" else "frozen"]
        folds = own[1] - d["unguarded" if own[2] == "meta" else "frozen"][1]  # the guard's own seconds
        d[name] = (path[0], path[1] + (folds if i < m else 0.0), verdict["use"])
    return verdict


def report(rows: list[dict], recipe, argv: list[str], seconds: float) -> str:
    lines = [f"# The guard's fold steps: recipe {recipe.steps} steps, step size x{recipe.scale:g}", "",
             f"`{common.command('guard_steps', argv)}` — {seconds / 60:.1f} min", "",
             "| cell | method | accuracy (95% CI) | − unguarded, paired | − frozen, paired | kept frozen | s / episode |",
             "|---" * 7 + "|"]
    for r in rows:
        kept = "—" if r["kept_frozen"] is None else f"{r['kept_frozen']} / {r['n']}"
        lines.append(f"| {r['cell']} | {r['method']} | {common.mean_ci(r['accuracy'], r['ci95'])} | "
                     f"{common.mean_ci(*r['minus_unguarded'])} | {common.mean_ci(*r['minus_frozen'])} | {kept} | "
                     f"{r['seconds']:.2f} |")
    lines += [f"\n{r['cell']}, {r['method']}: verdict {r['verdict']['use']}, held-out difference "
              f"{common.mean_ci(r['verdict']['held_out_difference'], r['verdict']['ci95'])} over "
              f"{r['verdict']['tasks']} tasks" for r in rows if "verdict" in r]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
