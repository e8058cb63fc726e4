"""Leave one data set out: meta-train on three few-shot text data sets, test on the fourth (all-MiniLM-L6-v2, NF4).

Data sets: CLINC150 and HWU64 (intents), FewRel (relations, entities marked) and HuffPost (news headlines,
Bao et al. 2020 class split). For each target, ProtoMAML and ProtoNet are meta-trained on a mixture of the
other three (``tasks.mix``: each episode from one data set, Meta-Dataset style), then every method runs on
the same test episodes of the target's test classes (paired). The in-domain row trains on CLINC150's
training intents plus the other three data sets and tests on CLINC150's held-out intents.

Methods, each cell a paired difference from the frozen encoder (cosine prototypes) with its 95% interval:

* ``protomaml``: the meta-learned init (LoRA, cosine prototype head; ``--prompt-tokens`` adds a soft prompt) with
  its inner loop (support loss at ``--support-temperature``);
* ``protonet``: the same adapters, sources and budget, trained with the prototypical loss (0 steps, and
  fine-tuned like the others);
* ``finetune``: fine-tuning from the foundation, fresh LoRA (B = 0) + a prototype-initialized head trained on
  the support set (the strong transfer baseline of Chen et al. 2019, "A Closer Look at Few-shot Classification");
* ``random_init``: random-init PEFT (LoRA with a random A and B = 0, plus a random soft prompt if any) fine-tuned
  the same way;
* ``prototypes`` / ``linear_probe``: the frozen encoder;
* ``protomaml+guard``: per task from its support set at K >= 2 (leave-one-shot-out folds), per target on its
  validation classes at K = 1 (``metalearn.eval.guard``).

Inner learning rates are chosen per method and step count on validation episodes, by accuracy. A held-out
target's validation classes are all its non-test classes (nothing of it is trained on); its test classes are
those of the earlier run (README) for HWU64 and FewRel, the specs' for CLINC150 and HuffPost.

    python examples/leave_one_out.py --quick      # checks the whole path in about a minute (CI)
    python examples/leave_one_out.py              # the full experiment: 600 paired episodes per cell
    python examples/leave_one_out.py --targets huffpost --resume   # add cells to an earlier run's table

Writes ``summary.md``/``summary.json``, ``loo_heatmap.png`` and each cell's harness files under ``--output-dir``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import torch

import metalearn
from metalearn.eval import guard, metrics, sample_tasks
from metalearn.eval.report import atomic_write
from metalearn.tasks import check_target, load, mix

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clinc_intents import add_speed_arguments, compute_dtype, encoder_path  # noqa: E402

DATASETS = ("clinc150", "hwu64", "fewrel", "huffpost")
TARGET_SPLITS = {"hwu64": [0.25, 0.25, 0.5], "fewrel": [0.34, 0.33, 0.33]}
"""Class splits of HWU64 and FewRel as targets: the earlier run's (README), so the test classes are the same."""
BASELINES = ["prototypes", "linear_probe", "random_init"]


@dataclass
class Row:
    """One row of the experiment: meta-train on ``sources``, test on ``target``'s test classes."""

    target: str
    sources: list[str]
    in_domain: bool = False

    @property
    def label(self) -> str:
        return f"{self.target} (in-domain)" if self.in_domain else self.target


def parse_rows(targets: str, in_domain: str, datasets: list[str]) -> list[Row]:
    """'hwu64,fewrel=clinc150+huffpost' -> leave-one-out rows (sources: the other data sets, or the ones named)."""
    rows = []
    for item in [t.strip() for t in targets.split(",") if t.strip()]:
        target, _, named = item.partition("=")
        sources = named.split("+") if named else [d for d in datasets if d != target]
        check_target(sources, target)  # a leave-one-out target is never a source
        rows.append(Row(target, sources))
    if in_domain:
        rows.append(Row(in_domain, list(datasets), in_domain=True))
    unknown = sorted({d for r in rows for d in [r.target, *r.sources]} - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}")
    return rows


def parse_settings(text: str) -> list[tuple[int, int]]:
    """'5x1,5x5,15x1' -> [(5, 1), (5, 5), (15, 1)] (N-way, K-shot)."""
    try:
        return [(int(n), int(k)) for n, k in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise SystemExit(f"--settings {text!r} is not NxK,NxK,... e.g. 5x1,5x5,15x1") from None


def conventional(name: str):
    """The data set with its conventional class split (as a target)."""
    return load(name, **({"splits": TARGET_SPLITS[name]} if name in TARGET_SPLITS else {}))


def sources_for(row: Row, args) -> metalearn.tasks.Mixture:
    """The meta-training mixture: every class of each source data set, only the training classes of the target."""
    families = {}
    for name in row.sources:
        spec = load(name)
        classes = spec.classes("train") if row.in_domain and name == row.target else [
            c for s in ("train", "val", "test") for c in spec.classes(s)]
        families[name] = load(name, splits={"train": classes, "val": [], "test": []}, q_query=args.train_queries,
                              n_way=(min(5, len(classes)), min(args.train_ways, len(classes))), k_shot=args.train_shots)
    return mix(families, name="+".join(row.sources))


def target_for(row: Row, n_way: int, k_shot: int):
    """The target's episodes: its test classes; validation on the classes no learner saw. None if N is too large."""
    spec = conventional(row.target)
    train, val, test = (spec.classes(s) for s in ("train", "val", "test"))
    if not row.in_domain:
        train, val = [], train + val  # the whole data set is held out: every non-test class can validate
    if n_way > min(len(val), len(test)):
        return None
    return load(row.target, n_way=n_way, k_shot=k_shot, q_query=5,
                splits={"train": train, "val": val, "test": test})


def adapter_settings(args) -> dict:
    return dict(model_name=encoder_path(), quantization="nf4", compute_dtype=compute_dtype(args.compute_dtype),
                lora_r=8, target_modules=["query", "value"], prompt_tokens=args.prompt_tokens, head="prototype",
                head_metric="cosine", head_temperature=0.05,
                inner_lr=args.inner_lr, support_temperature=args.support_temperature, seed=args.seed)


def train(row: Row, mixture, args, out: str) -> dict[str, metalearn.Learner]:
    """ProtoMAML and ProtoNet on the same episodes and budget; the foundation with a fresh LoRA for fine-tuning."""
    common = dict(adapter_settings(args), meta_batch=1, meta_lr=args.meta_lr, schedule="cosine",
                  on_nonfinite="skip", progress=not args.quiet)
    learners = {
        "protomaml": metalearn.fit(mixture, method="fomaml", inner_steps=args.inner_steps, meta_steps=args.train_episodes,
                                   output_dir=os.path.join(out, "train_protomaml"), **common),
        "protonet": metalearn.fit(mixture, method="protonet", meta_steps=args.train_episodes,
                                  output_dir=os.path.join(out, "train_protonet"), **common),
    }
    common.update(prompt_tokens=0)  # fine-tuning from the foundation: LoRA B = 0 is the frozen model itself
    learners["finetune"] = metalearn.fit(mixture, method="fomaml", inner_steps=1, meta_steps=0, **common)
    return learners


def evaluate_cell(row: Row, learners: dict, family, n_way: int, k_shot: int, args, out: str) -> tuple[list, dict]:
    """Every method on the cell's test episodes, then the guarded ProtoMAML; rows for the summary and the guard's record."""
    cell = cell_name(row, n_way, k_shot)
    folder = os.path.join(out, f"{row.target}{'_in' if row.in_domain else ''}_{n_way}way_{k_shot}shot")
    results = metalearn.evaluate(learners, family, baselines=BASELINES, steps=args.steps, episodes=args.episodes,
                                 lr_grid=args.lr_grid, val_episodes=args.val_episodes, seed=args.seed,
                                 reference="prototypes", progress=not args.quiet, workers=args.workers)
    last = max(args.steps)
    tuned = [t["scale"] for t in results.tuning if t["method"] == "protomaml" and t["steps"] == last]
    scale = tuned[0] if tuned else 1.0
    meta = learners["protomaml"]
    if k_shot >= 2:
        choices = guard.decide_tasks(meta, sample_tasks(family, "test", args.episodes, args.seed), steps=last,
                                     scale=scale, folds=args.guard_folds, workers=args.workers)
        record = {"kind": "per task (support folds)", "adapted": sum(c["use"] == "meta" for c in choices) / len(choices)}
    else:
        choice = guard.choose(meta, family, foundation="prototypes", steps=last, episodes=args.guard_episodes,
                              metric="accuracy", seed=args.seed, scale=scale, workers=args.workers)
        choices = [choice] * args.episodes
        record = {"kind": "per target (validation classes)", "adapted": float(choice["use"] == "meta"),
                  "val": choice["val"]}
    results = guard.combine(results, "protomaml", "prototypes", last, choices)
    results.save(folder)
    rows = [{"cell": cell, **r} for r in results.summary if r["metric"] == "accuracy"]
    rows += [{"cell": cell, "paired": True, **r} for r in results.paired if r["metric"] == "accuracy"]
    rows += [{"cell": cell, "paired": True, **pair} for pair in versus_protonet(results.records, last)]
    print(f"\n## {cell}\n\n{results.table('accuracy')}\nguard: {record}")
    return rows, {cell: record}


def cell_name(row: Row, n_way: int, k_shot: int) -> str:
    return f"{row.label} {n_way}w{k_shot}s"


RUN_ARGS = {"quick", "output_dir", "targets", "in_domain", "settings", "threads", "workers", "quiet", "report_only",
            "resume", "argv"}
"""Arguments that say which cells to run and how fast, not what a cell computes: a resumed run may change them."""


def resumed(previous: dict, args) -> dict:
    """The summary of an earlier run to extend (``--resume``), if it computed its cells the way ``args`` would."""
    now = {k: v for k, v in vars(args).items() if k not in RUN_ARGS}
    then = {k: v for k, v in previous["args"].items() if k not in RUN_ARGS}
    differ = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if differ:
        raise SystemExit(f"--resume: {args.output_dir} holds cells computed with other settings "
                         f"({', '.join(f'{k}={then.get(k)!r} there, {now.get(k)!r} here' for k in differ)}); "
                         "pass the same settings, or another --output-dir")
    previous.setdefault("runs", [{"argv": previous["args"]["argv"], "minutes": previous.get("minutes", 0.0)}])
    return previous


def checkout() -> str:
    """This code's git commit ('+' when the checkout has uncommitted changes), 'unknown' outside git: which
    code computed the cells a run added (a resumed table may hold cells of several runs)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+" if dirty else "")


def versus_protonet(records: list[dict], last: int) -> list[dict]:
    """ProtoMAML minus ProtoNet (at 0 steps and at ``last``), paired over the same episodes."""
    def scores(method, steps):
        return {r["episode"]: r["accuracy"] for r in records if r["method"] == method and r["steps"] == steps}

    out = []
    meta = scores("protomaml", last)
    for steps in sorted({0, last}):
        other = scores("protonet", steps)
        episodes = sorted(set(meta) & set(other))
        mean, ci = metrics.paired_ci([meta[e] for e in episodes], [other[e] for e in episodes])
        out.append({"method": "protomaml", "reference": f"protonet ({steps} steps)", "steps": last,
                    "metric": "accuracy", "mean_diff": mean, "ci95": ci, "n": len(episodes)})
    return out


TABLE_METHODS = [("protomaml", "last"), ("protomaml+guard", "last"), ("protonet", 0), ("protonet", "last"),
                 ("finetune", "last"), ("random_init", "last"), ("linear_probe", "last"), ("prototypes", "last")]


def tables(summary: dict, out: str) -> str:
    """Accuracy, difference from the frozen encoder, and ProtoMAML − ProtoNet, as markdown; draws the heat-map."""
    from metalearn.plots import difference_heatmap

    rows, last = summary["rows"], max(summary["args"]["steps"])
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    label = lambda m, s: m if m in ("prototypes", "linear_probe") else f"{m} ({s} step{'' if s == 1 else 's'})"  # noqa: E731
    head = lambda first: ["| " + first + " | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]  # noqa: E731
    acc, diff, heat = head("accuracy (%)"), head("paired difference from the frozen encoder"), {}
    for method, steps in TABLE_METHODS:
        steps = last if steps == "last" else steps
        a = {r["cell"]: r for r in rows if not r.get("paired") and r["method"] == method and r["steps"] == steps}
        d = {r["cell"]: r for r in rows if r.get("paired") and r["method"] == method and r["steps"] == steps
             and r["reference"] == "prototypes"}
        acc.append(f"| {label(method, steps)} | " + " | ".join(
            f"{100 * a[c]['mean']:.1f} ± {100 * a[c]['ci95']:.1f}" if c in a else "" for c in cells) + " |")
        if method != "prototypes":
            diff.append(f"| {label(method, steps)} | " + " | ".join(
                f"{100 * d[c]['mean_diff']:+.1f} ± {100 * d[c]['ci95']:.1f}" if c in d else "" for c in cells) + " |")
            heat.update({(label(method, steps), c): (100 * d[c]["mean_diff"], 100 * d[c]["ci95"]) for c in d})
    versus = head("ProtoMAML − ProtoNet (paired)")
    for ref in list(dict.fromkeys(r["reference"] for r in rows if r.get("reference", "").startswith("protonet"))):
        d = {r["cell"]: r for r in rows if r.get("reference") == ref}
        versus.append(f"| − {ref} | " + " | ".join(
            f"{100 * d[c]['mean_diff']:+.1f} ± {100 * d[c]['ci95']:.1f}" if c in d else "" for c in cells) + " |")
    methods = list(dict.fromkeys(m for m, _ in heat))
    difference_heatmap(heat, methods, cells, os.path.join(out, "loo_heatmap.png"),
                       "leave one data set out: paired difference from the frozen encoder (95% CI)")
    guard_lines = [f"- {c}: {g['kind']}, adapted on {100 * g['adapted']:.0f}% of episodes"
                   + (f" (validation accuracy meta {g['val']['meta']:.3f} vs frozen {g['val']['foundation']:.3f})"
                      if "val" in g else "") for c, g in summary["guard"].items()]
    return "\n\n".join(["\n".join(acc), "\n".join(diff), "\n".join(versus), "The guard:\n" + "\n".join(guard_lines)])


def report(summary: dict, out: str) -> str:
    args = summary["args"]
    runs = summary.get("runs") or [{"argv": args["argv"], "minutes": summary.get("minutes")}]

    def command(run: dict) -> str:
        notes = ([f"{run['minutes']:.1f} min wall time"] if run.get("minutes") else []) + (
            [f"code {run['code']}"] if run.get("code") else [])
        return f"`python examples/leave_one_out.py {' '.join(run['argv'])}`" + (f" ({', '.join(notes)})" if notes else "")

    commands = "; then ".join(command(r) for r in runs)
    text = (f"# Leave one data set out, all-MiniLM-L6-v2 in NF4\n\n"
            f"Accuracy (%) on the query sets (5 per class), mean ± 95% CI over {args['episodes']} paired test episodes "
            f"per cell; adapting methods after the step count shown, inner learning rates chosen on validation "
            f"episodes by accuracy.\nCommand{'s' if len(runs) > 1 else ''}: {commands}.\n\n"
            + tables(summary, out) + "\n")
    atomic_write(os.path.join(out, "summary.md"), text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (about a minute) that checks the path")
    parser.add_argument("--output-dir", default="runs/leave_one_out", help="where tables, JSON and plots go")
    parser.add_argument("--targets", default=",".join(DATASETS),
                        help="leave-one-out targets, comma separated; TARGET=SRC+SRC names the sources explicitly")
    parser.add_argument("--in-domain", default="clinc150", help="the in-domain row's data set ('' to skip)")
    parser.add_argument("--settings", default="5x1,5x5,15x1", help="NxK settings (skipped where a split is too small)")
    parser.add_argument("--episodes", type=int, default=600, help="paired test episodes per cell")
    parser.add_argument("--val-episodes", type=int, default=50, help="validation episodes for the inner-lr search")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[0.3, 1.0, 3.0], help="inner-lr multipliers")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 3], help="inner steps scored at evaluation")
    parser.add_argument("--train-episodes", type=int, default=300, help="meta-training episodes per method and row")
    parser.add_argument("--train-ways", type=int, default=10, help="largest N of meta-training episodes (from 5)")
    parser.add_argument("--train-shots", type=int, nargs=2, default=[1, 5], help="K range of meta-training episodes")
    parser.add_argument("--train-queries", type=int, default=5, help="query examples per class when meta-training")
    parser.add_argument("--inner-steps", type=int, default=1, help="ProtoMAML inner steps during meta-training")
    parser.add_argument("--inner-lr", type=float, default=0.5, help="inner learning rate (searched at evaluation)")
    parser.add_argument("--support-temperature", type=float, default=0.2,
                        help="cosine-head temperature of the inner loop's support loss (the head's own is 0.05, at "
                        "which a 1-shot support loss is ~0 and even a 5-shot one ~0.003)")
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--prompt-tokens", type=int, default=0,
                        help="soft prompt length; 0 (LoRA only, B = 0) starts meta-training at the frozen foundation")
    parser.add_argument("--guard-folds", type=int, default=5, help="support folds of the per-task guard (K >= 2)")
    parser.add_argument("--guard-episodes", type=int, default=100,
                        help="validation episodes of the per-target guard (K = 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    add_speed_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report-only", action="store_true", help="redraw summary.md and the heat-map from summary.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cells already in --output-dir's summary.json (run with the same settings) and "
                        "run only the missing ones (a row with a missing cell is meta-trained again)")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.targets, args.in_domain, args.settings = "huffpost", "", "5x1,5x2"
        args.episodes, args.val_episodes, args.lr_grid, args.steps = 3, 2, [1.0], [0, 1]
        args.train_episodes, args.train_ways, args.train_shots, args.guard_episodes, args.guard_folds = 2, 5, [1, 2], 2, 2
    out = args.output_dir
    if args.report_only:
        print(report(json.loads(open(os.path.join(out, "summary.json")).read()), out))
        return
    rows = parse_rows(args.targets, args.in_domain, list(DATASETS))  # bad input fails before any work
    settings = parse_settings(args.settings)
    torch.set_num_threads(args.threads)
    summary_path = os.path.join(out, "summary.json")
    summary = {"args": {k: v for k, v in vars(args).items()}, "rows": [], "guard": {}, "runs": []}
    if args.resume and os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = resumed(json.load(f), args)  # refused before any work if its cells were computed otherwise
    done = {r["cell"] for r in summary["rows"]}
    os.makedirs(out, exist_ok=True)
    started = time.time()
    this_run = {"argv": args.argv, "minutes": 0.0, "code": checkout()}  # listed once it has added a cell
    for row in rows:
        todo = {}
        for n_way, k_shot in settings:
            family = None if cell_name(row, n_way, k_shot) in done else target_for(row, n_way, k_shot)
            if family is not None:
                todo[n_way, k_shot] = family
            elif cell_name(row, n_way, k_shot) not in done:
                print(f"skipping {row.label} {n_way}w{k_shot}s: too few validation or test classes for {n_way}-way")
        if not todo:
            print(f"{row.label}: no cell left to run")
            continue
        mixture = sources_for(row, args)
        row_dir = os.path.join(out, row.target + ("_in" if row.in_domain else "_loo"))
        learners = train(row, mixture, args, row_dir)
        for (n_way, k_shot), family in todo.items():
            if row.in_domain:
                guard.check_held_out(mixture, family)
            cell_rows, record = evaluate_cell(row, learners, family, n_way, k_shot, args, row_dir)
            summary["rows"] += cell_rows
            summary["guard"].update(record)
            if not summary["runs"] or summary["runs"][-1] is not this_run:
                summary["runs"].append(this_run)
            this_run["minutes"] = (time.time() - started) / 60
            summary["minutes"] = sum(r["minutes"] for r in summary["runs"])
            atomic_write(summary_path, json.dumps(summary, indent=2))
    print("\n" + report(summary, out))
    print(f"wall time {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
