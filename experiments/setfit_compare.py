"""SetFit side by side with the frozen encoder, a fine-tune from the foundation and the guarded recipe (one target).

A ProtoNet init (LoRA r=8 on query/value of all-MiniLM-L6-v2 in NF4, cosine prototype head) is meta-trained
on the target's training classes, episodes of 5 to 10 ways (at most the smallest split's classes) and 1 to 5
shots. For every N-way K-shot setting, ``metalearn.tune_recipe`` chooses its test-time steps and step size on
validation classes, and then, on the same test episodes of the target's held-out classes:

* ``prototypes`` / ``linear_probe``: the frozen encoder (cosine prototypes; logistic regression);
* ``random_init``: fine-tuning from the foundation, fresh LoRA (B = 0) and a prototype head, same inner loop;
* ``protonet``: the meta-trained init adapted at the recipe's step count, unguarded (the harness's row);
* ``recipe``: what a user gets, ``metalearn.load(saved).adapt(task.support)``: the learner saved with the
  setting's recipe and loaded back (``<setting>/learner``), guarded at K >= 2
  by the task's own support folds (at K = 1 nothing can be held out, so it adapts);
* ``pooled`` (K >= 2): what a user who adapts many tasks of one target gets, the same loaded learner behind
  one verdict pooled over the folds of all the setting's support sets (``eval.guard.decide_gated``, then
  ``adapt(support, guard=choice)``); its seconds are each task's own folds plus its adaptation;
* ``setfit``: SetFit with its defaults, trained per episode from the same encoder folder, on the first
  ``--setfit-episodes`` episodes (a 5-way 5-shot episode costs 21-37 s on
  one CPU thread on intents and news, 62 s on FewRel's long sentences).

Every number is the mean over episodes with its 95% interval; differences are paired, episode by episode,
against SetFit on the episodes it ran and against the frozen encoder's prototypes (SetFit: on its
episodes). Seconds are wall seconds per episode to adapt and score.

    python -m experiments.setfit_compare --quick     # the whole path in a few minutes (CI)
    python -m experiments.setfit_compare --target clinc150 --episodes 600 --setfit-episodes 100 --workers 2
    python -m experiments.setfit_compare --target clinc150 --replay 30   # the recipe row, as a user runs it

``--replay N`` checks an earlier run's recipe row the way a user would get it: in this fresh process, one task
at a time, no harness around it, ``metalearn.load(<setting>/learner).adapt(support).predict(query)`` on the
first N test episodes of each setting, compared episode by episode with ``results.json`` (``replay.json``).
With ``--guard-folds F`` it replays the saved recipe guarded by F support folds instead (``--guard-steps S``:
each fold adapting S steps; 0 scores the unadapted init on them; ``--reuse-fold``: an adapted task keeps its
first fold's adaptation, ``Recipe.reuse_fold``), and with ``--pooled``
behind a verdict pooled over the N support sets; ``--pooled M`` decides the verdict on the first M of them
only, once for the target, and the rest follow it without folds (or decide on their own folds when it is
unclear); ``--online`` settles it as the tasks arrive (``eval.guard.TargetGate``). Each is paired with every row
of the run, on the episodes both have (``replay_guard_folds_F.json``, ``replay_pooled.json``,
``replay_pooled_M.json``, ``replay_online.json``, ``replay_guard_steps_S.json``, ``..._reuse_fold.json``); these may
replay more episodes than the run scored.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np

import metalearn
from experiments import common
from metalearn.eval import SetFitOptions, guard, metrics, sample_tasks
from metalearn.eval.workers import forked_map
from metalearn.tasks import load
from metalearn.views import evaluation_mode

METHODS = ("prototypes", "linear_probe", "random_init", "protonet", "recipe", "pooled", "setfit")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = common.parser(__doc__)
    common.add_run_arguments(p, None, "tiny budgets: the whole path in a few minutes")
    p.add_argument("--target", default=None,
                   help="a classification spec with held-out test classes (default clinc150; a replay reads the run's)")
    p.add_argument("--settings", default="5x1,5x5", help="NxK test settings")
    p.add_argument("--splits", type=_fractions, default=None, metavar="TRAIN,VAL,TEST",
                   help="class fractions of the target's meta-splits (default: the spec's); FewRel's spec keeps 3 "
                   "validation relations, too few for 5-way settings: 0.34,0.33,0.33 gives 6 / 5 / 5, the test "
                   "relations of leave_one_out")
    common.add_encoder_arguments(p, 600, "test episodes per setting", 32)
    p.add_argument("--setfit-episodes", type=int, default=100, help="SetFit on the first this many of them")
    p.add_argument("--train-episodes", type=int, default=300, help="ProtoNet meta-training episodes")
    p.add_argument("--support-temperature", type=float, default=0.2,
                   help="temperature of the cosine head in the test-time inner loop's support loss")
    p.add_argument("--guard-folds", type=int, default=None,
                   help="support folds of the recipe's guard at K >= 2 (default: K, leave one shot out); each fold "
                   "costs one more adaptation")
    p.add_argument("--guard-steps", type=int, default=None,
                   help="inner steps of each guard fold (default: the recipe's steps; 0: the folds score the "
                   "meta-learned init unadapted, one forward of the support set for all of them)")
    p.add_argument("--reuse-fold", action="store_true",
                   help="a task the guard adapts keeps its first fold's adaptation (prototypes from all K shots) "
                   "instead of adapting again on the whole support set (Recipe.reuse_fold); with --guard-folds 1 a "
                   "guarded task costs less than one unguarded adaptation")
    p.add_argument("--step-tolerance", type=float, default=0.0,
                   help="the recipe takes the fewest steps whose validation accuracy is within this of the best "
                   "(0: the best; 0.02: two points, a tenth of the time where 1 step is as good as 10)")
    p.set_defaults(prompt_tokens=0)
    p.add_argument("--setfit-iterations", type=int, default=None,
                   help="SetFit's num_iterations (default: SetFit's own sampling, as practitioners get it)")
    p.add_argument("--replay", type=int, default=0, metavar="N",
                   help="replay the recipe row of the run in --output-dir on its first N episodes, as a user would "
                   "(with --guard-folds or --guard-steps: the saved recipe with that guard, paired with the run's "
                   "rows)")
    p.add_argument("--pooled", type=int, nargs="?", const=0, default=None, metavar="M",
                   help="with --replay: the saved recipe behind a verdict pooled over the N support sets' folds (M: "
                   "over the first M only; the other tasks follow it without folds)")
    p.add_argument("--online", action="store_true",
                   help="with --replay: the saved recipe behind a verdict settled online as the tasks arrive "
                   "(eval.guard.TargetGate: looks at 8, 16, 32, ... tasks; after it settles, no folds)")
    args = p.parse_args(common.argv_of(argv))
    settings = common.parse_settings(args.settings)
    if args.replay < 0:
        p.error(f"--replay {args.replay} is invalid: give a number of episodes to replay (or leave it out)")
    if args.pooled is not None and not args.replay:
        p.error("--pooled replays a run's recipe behind a pooled verdict: give --replay N too (a run scores the "
                "pooled row at K >= 2 by itself)")
    if args.online and (not args.replay or args.pooled is not None):
        p.error("--online replays a run's recipe behind a verdict settled as the tasks arrive: give --replay N, "
                "and not --pooled (one or the other)")
    if args.pooled is not None and not 2 <= (args.pooled or args.replay) <= args.replay:
        p.error(f"--pooled {args.pooled} is invalid: pool over 2 to --replay {args.replay} support sets (or give no "
                "number: all of them)")
    if args.guard_folds is not None and args.guard_folds < 1:
        p.error(f"--guard-folds {args.guard_folds} is invalid: give at least 1 fold (or leave it out for K)")
    if args.guard_steps is not None and args.guard_steps < 0:
        p.error(f"--guard-steps {args.guard_steps} is invalid: give a number of steps >= 0 (or leave it out)")
    args.output_dir = args.output_dir or os.path.join("runs", f"setfit_compare_{args.target or 'clinc150'}")
    if args.replay:
        return replay(args, settings, common.argv_of(argv))
    args.target = args.target or "clinc150"
    if args.quick:
        args.episodes, args.setfit_episodes, args.train_episodes, args.val_episodes = 6, 3, 8, 3
    if not 0 <= args.step_tolerance < float("inf"):
        p.error(f"--step-tolerance {args.step_tolerance} is invalid: give an accuracy difference >= 0, e.g. 0.02")
    if not 1 <= args.setfit_episodes <= args.episodes:
        p.error(f"--setfit-episodes {args.setfit_episodes} must be between 1 and --episodes {args.episodes}")
    try:
        classes = {s: len(target(args).classes(s)) for s in ("train", "val", "test")}
    except ValueError as e:  # bad --splits (or target), before any file is written
        p.error(str(e))
    widest = max(n for n, _ in settings)
    short = {s: c for s, c in classes.items() if c < widest}
    if short:
        p.error(f"--target {args.target} has {classes} classes per split; the {args.settings} settings need at least "
                f"{widest} in each (short: {short}): give --splits, e.g. 0.34,0.33,0.33")
    start = common.setup(args)
    adapters = common.encoder_settings(args, quantization="nf4", lora_r=8, target_modules=["query", "value"],
                                       compute_dtype=common.compute_dtype(args.compute_dtype),
                                       support_temperature=args.support_temperature)
    ways = min(10, *classes.values())  # HuffPost has 5 val classes
    learner = metalearn.fit(target(args, n_way=(min(5, ways), ways), k_shot=(1, 5), q_query=5), method="protonet",
                            meta_steps=args.train_episodes, output_dir=os.path.join(args.output_dir, "train"),
                            **common.meta_settings(adapters, args))
    options = SetFitOptions(num_iterations=args.setfit_iterations)
    rows = [row for n, k in settings for row in cell(learner, args, n, k, options)]
    text = report(rows, args, common.argv_of(argv), time.time() - start)
    return common.write_report(args.output_dir, text, {"rows": rows, "argv": common.argv_of(argv),
                                                         "target": args.target, "splits": args.splits})


def target(args, **overrides):
    """The target's task family, with ``--splits`` when given."""
    return load(args.target, **({"splits": list(args.splits)} if args.splits else {}), **overrides)


def _fractions(text: str) -> tuple[float, ...]:
    """'0.34,0.33,0.33' -> (0.34, 0.33, 0.33); the task spec checks them (``tasks.splits.assign_splits``)."""
    return tuple(float(x) for x in text.split(","))


def cell(learner, args, n_way: int, k_shot: int, options: SetFitOptions) -> list[dict]:
    """Every method on one setting's test episodes; SetFit on the first ``--setfit-episodes``."""
    family = target(args, n_way=n_way, k_shot=k_shot, q_query=5)
    recipe = metalearn.tune_recipe(learner, family, lr_grid=args.lr_grid, val_episodes=args.val_episodes,
                                   seed=args.seed + 1, folds=args.guard_folds, tolerance=args.step_tolerance,
                                   guard_steps=args.guard_steps, reuse_fold=args.reuse_fold,
                                   workers=args.workers)
    saved = os.path.join(args.output_dir, f"{n_way}x{k_shot}", "learner")
    learner.save(saved)  # with its recipe: the recipe row is what load(saved).adapt(support) does
    harness = metalearn.evaluate({"protonet": learner}, family, baselines=["prototypes", "linear_probe", "random_init"],
                                 steps=[recipe.steps], episodes=args.episodes, seed=args.seed, lr_grid=args.lr_grid,
                                 val_episodes=args.val_episodes, workers=args.workers, progress=not args.quiet,
                                 output_dir=os.path.join(args.output_dir, f"{n_way}x{k_shot}"))
    per = {m: _column(harness, m, recipe.steps) for m in ("prototypes", "linear_probe", "random_init", "protonet")}
    user, tasks = metalearn.load(saved), sample_tasks(family, "test", args.episodes, args.seed)
    user_rows = {"recipe": _recipe_column(user, tasks, args.workers)}
    if k_shot >= 2:
        user_rows["pooled"] = _recipe_column(user, tasks, args.workers, pooled=0)
    per.update({m: (r["accuracy"], r["seconds"]) for m, r in user_rows.items()})
    setfit = metalearn.evaluate({"protonet": learner}, family, baselines=["setfit"], steps=[0], lr_grid=None,
                                episodes=args.setfit_episodes, seed=args.seed, workers=args.workers, setfit=options,
                                progress=not args.quiet)
    per["setfit"] = _column(setfit, "setfit", 0)
    m = args.setfit_episodes
    frozen = per["prototypes"][0]
    out = []
    for method in (name for name in METHODS if name in per):
        acc, secs = per[method]
        mean, ci = metrics.mean_ci(acc)
        diff = metrics.paired_ci(acc[:m], per["setfit"][0][:m]) if method != "setfit" else (0.0, 0.0)
        below = metrics.paired_ci(acc, frozen[:len(acc)])  # SetFit: on its episodes
        out.append({"setting": f"{n_way}-way {k_shot}-shot", "method": method, "accuracy": mean, "ci95": ci,
                    "n": len(acc), "minus_setfit": diff[0], "minus_setfit_ci95": diff[1], "setfit_n": m,
                    "minus_prototypes": below[0], "minus_prototypes_ci95": below[1],
                    "seconds": float(np.mean(secs)), "seconds_ci95": metrics.mean_ci(secs)[1],
                    "recipe": recipe.to_dict(), "per_episode": acc,
                    **{k: v for k, v in user_rows.get(method, {}).items() if k in ("kept_foundation", "verdict")}})
    return out


def _column(results, method: str, steps: int) -> tuple[list[float], list[float]]:
    """Per-episode accuracies and seconds of ``method`` at ``steps``, in episode order."""
    acc = {r["episode"]: r["accuracy"] for r in results.records if r["method"] == method and r["steps"] == steps}
    secs = {t["episode"]: t["seconds"] for t in results.timing if t["method"] == method and t["steps"] == steps}
    return [acc[i] for i in sorted(acc)], [secs[i] for i in sorted(secs)]


def _recipe_column(learner, tasks, workers: int, pooled: Optional[int] = None, online: bool = False) -> dict:
    """What a user gets: ``learner.adapt(support)`` (saved recipe, guard by default), scored on the query.

    ``pooled`` (a number of tasks, 0: all): behind one verdict pooled over the support folds of the first that
    many tasks (``eval.guard.decide_gated``); those tasks' seconds include their own folds, the others follow a
    clear verdict without folds (an unclear one: each decides on its own folds). ``online``: behind an
    ``eval.guard.TargetGate`` (the tasks in order: folds until its verdict settles, none after). Returns
    per-episode ``accuracy`` and ``seconds``, how many tasks kept the frozen encoder (``kept_foundation``) and,
    pooled or online, the ``verdict``.
    """
    choices, verdict = [None] * len(tasks), None
    if pooled is not None:
        m = pooled or len(tasks)
        choices, verdict = guard.decide_gated(learner, [t.support for t in tasks[:m]], workers=workers)
        rest = None if verdict["use"] == "per task" else guard.follow(verdict, {"seconds": 0.0})
        choices += [rest] * (len(tasks) - m)
    if online:
        gate = guard.TargetGate(learner, workers=workers)
        choices, verdict = gate.choose_many([t.support for t in tasks]), gate.verdict

    def one(job) -> tuple[float, float, str]:
        task, choice = job
        start = time.perf_counter()
        adapted = learner.adapt(task.support, guard=choice)
        pred = adapted.predict(task.query)
        seconds = time.perf_counter() - start + (choice["seconds"] if choice else 0.0)
        return metrics.accuracy(pred.cpu().numpy(), np.asarray(task.query["label"])), seconds, adapted.use

    with evaluation_mode([learner]):
        done = list(forked_map(one, list(zip(tasks, choices)), workers))
    column = {"accuracy": [a for a, _, _ in done], "seconds": [s for _, s, _ in done],
              "kept_foundation": sum(u == "foundation" for _, _, u in done)}
    return {**column, "verdict": verdict} if pooled is not None or online else column


def replay(args, settings, argv: list[str]) -> dict:
    """The recipe row again, as a user runs it: loaded in this process, ``adapt(support).predict(query)`` per task."""
    out = args.output_dir
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"--replay: {path} does not exist; run setfit_compare with --output-dir {out} first")
    run = common.read_json(path)
    saved = {r["setting"]: r for r in run["rows"] if r["method"] == "recipe"}
    ran = run.get("target") or common.option(run["argv"], "--target") or "clinc150"
    if args.target not in (None, ran):
        raise SystemExit(f"--replay: {path} is a run on {ran!r}, not --target {args.target!r}; leave --target out")
    args.target, args.splits = ran, args.splits or run.get("splits")  # the run's target and test classes
    common.setup(args)
    checks = []
    for n_way, k_shot in settings:
        setting = f"{n_way}-way {k_shot}-shot"
        other_guard = (args.guard_folds is not None or args.guard_steps is not None or args.pooled is not None
                       or args.online or args.reuse_fold)
        if setting not in saved or args.replay > len(saved[setting]["per_episode"]) and not other_guard:
            raise SystemExit(f"--replay {args.replay}: {path} has no {setting} recipe row with that many episodes "
                             "(another guard, --pooled or --online, may replay more: paired on the run's)")
        learner = metalearn.load(os.path.join(out, f"{n_way}x{k_shot}", "learner"))
        if args.guard_folds is not None:
            learner.recipe = dataclasses.replace(learner.recipe, folds=args.guard_folds)
        if args.guard_steps is not None:
            learner.recipe = dataclasses.replace(learner.recipe, guard_steps=args.guard_steps)
        if args.reuse_fold:
            learner.recipe = dataclasses.replace(learner.recipe, reuse_fold=True)
        tasks = sample_tasks(target(args, n_way=n_way, k_shot=k_shot, q_query=5), "test", args.replay, args.seed)
        result = _recipe_column(learner, tasks, args.workers, pooled=args.pooled, online=args.online)
        now, seconds, kept = result["accuracy"], result["seconds"], result["kept_foundation"]
        then = saved[setting]["per_episode"][:args.replay]
        check = {"setting": setting, "episodes": len(now), "same": sum(a == b for a, b in zip(now, then)),
                 "max_abs_difference": max(abs(a - b) for a, b in zip(now, then)),
                 "replayed_mean": float(np.mean(now)), "saved_mean": float(np.mean(then)),
                 "kept_foundation": kept, "seconds": float(np.mean(seconds)), "per_episode": now}
        print(f"{setting}: {check['same']}/{len(now)} episodes identical, replayed mean {check['replayed_mean']:.4f}, "
              f"saved {check['saved_mean']:.4f}; kept the frozen encoder on {kept}; {check['seconds']:.2f} s / episode")
        if other_guard:  # paired with every row, on the episodes both have
            check.update(guard_folds=args.guard_folds, guard_steps=args.guard_steps, reuse_fold=args.reuse_fold,
                         pooled=args.pooled,
                         online=args.online, minus={})
            if "verdict" in result:
                check["verdict"] = result["verdict"]
                print(f"  {'online' if args.online else 'pooled'} verdict: {result['verdict']}")
            for r in run["rows"]:
                if r["setting"] == setting:
                    k = min(len(now), len(r["per_episode"]))
                    check["minus"][r["method"]] = metrics.paired_ci(now[:k], r["per_episode"][:k])
            print("  paired, replayed − " + ", ".join(f"{m} {common.mean_ci(*d)}" for m, d in check["minus"].items()))
        checks.append(check)
    pooled = "" if args.pooled is None else "_pooled" + (f"_{args.pooled}" if args.pooled else "")
    name = "replay" + pooled + ("_online" if args.online else "") + (
        f"_guard_folds_{args.guard_folds}" if args.guard_folds is not None else "") + (
        f"_guard_steps_{args.guard_steps}" if args.guard_steps is not None else "") + (
        "_reuse_fold" if args.reuse_fold else "") + ".json"
    common.write_json(os.path.join(out, name), {"checks": checks, "argv": argv}, indent=1)
    return {"checks": checks}


def report(rows: list[dict], args, argv: list[str], seconds: float) -> str:
    lines = [f"# SetFit side by side: {args.target} (all-MiniLM-L6-v2)", "",
             f"`{common.command('setfit_compare', argv)}` — {seconds / 60:.1f} min", "",
             "| setting | method | accuracy (95% CI) | episodes | − SetFit, paired | − frozen prototypes, paired "
             "| s / episode |", "|---" * 7 + "|"]
    for r in rows:
        diff = "—" if r["method"] == "setfit" else common.mean_ci(r["minus_setfit"], r["minus_setfit_ci95"])
        frozen = "—" if r["method"] == "prototypes" else common.mean_ci(r["minus_prototypes"], r["minus_prototypes_ci95"])
        lines.append(f"| {r['setting']} | {r['method']} | {common.mean_ci(r['accuracy'], r['ci95'])} | "
                     f"{r['n']} | {diff} (first {r['setfit_n']}) | {frozen} | "
                     f"{r['seconds']:.2f} ± {r['seconds_ci95']:.2f} |")
    recipes = {r["setting"]: r["recipe"] for r in rows}
    lines += ["", "Recipes (chosen on validation classes): " + "; ".join(
        f"{s}: {r['steps']} steps, step size x{r['scale']:g}" for s, r in recipes.items())]
    verdicts = [(r["setting"], r["verdict"]) for r in rows if r["method"] == "pooled"]
    if verdicts:
        lines += ["", "Pooled verdicts (over the setting's test support sets' folds): " + "; ".join(
            f"{s}: {v['use']}, held-out difference {common.mean_ci(v['held_out_difference'], v['ci95'])} over "
            f"{v['tasks']} tasks" for s, v in verdicts)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
