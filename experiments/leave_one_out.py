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
* ``protomaml+guard``: at K >= 2 per task from its support set (leave-one-shot-out folds) behind a verdict
  for the target pooled over its tasks' folds (``guard.decide_gated``), at K = 1 per target on the
  validation classes (``metalearn.eval.guard``).

Full-label cells (``--settings allx5,allx10``, CLINC150 and HWU64 only): the intent literature's protocol, every
class of the target in one task (150-way, 64-way), K support examples per class from the official train split,
the whole official test split as queries, one task per seed (``--full-seeds``); validation queries come from the
official val split (HWU64: a held-out tenth of train). The guard is per target there, on those validation tasks.
An in-domain row never gets them: its meta-training read the target's intents from every official split.

Inner learning rates are chosen per method and step count on validation episodes, by accuracy. A held-out
target's validation classes are all its non-test classes (nothing of it is trained on); its test classes are
those of the earlier run (README) for HWU64 and FewRel, the specs' for CLINC150 and HuffPost.

    python -m experiments.leave_one_out --quick      # checks the whole path in about a minute (CI)
    python -m experiments.leave_one_out              # the full experiment: 600 paired episodes per cell
    python -m experiments.leave_one_out --targets huffpost --resume   # add cells to an earlier run's table
    python -m experiments.leave_one_out --guard-only   # the guarded rows again, after a change to the guard
    python -m experiments.leave_one_out --targets clinc150,hwu64 --in-domain '' --settings allx5,allx10 \
        --steps 0 3 --output-dir runs/full_label         # the full-label protocol, 5 seeds per cell

Writes ``summary.md``/``summary.json``, ``loo_heatmap.png`` and each cell's harness files under ``--output-dir``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Optional

import metalearn
from experiments import common
from experiments.loo_report import CELL, checkout, report
from metalearn.adapters import check_target_modules
from metalearn.eval import EvalResults, guard, metrics, sample_tasks
from metalearn.tasks import check_target, load, mix

DATASETS = ("clinc150", "hwu64", "fewrel", "huffpost")
BASELINES = ["prototypes", "linear_probe", "random_init"]
FULL_LABEL = {"clinc150": "clinc150_full", "hwu64": "hwu64_full"}
"""The targets with a full-label spec (``allxK`` settings): their official train / val / test splits."""
NAMED = ("clinc150", "hwu64", "fewrel")
"""Data sets whose classes have readable names (``--class-names``); HuffPost's are numbers."""


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


def sources_for(row: Row, args) -> metalearn.tasks.Mixture:
    """The meta-training mixture: every class of each source data set, only the training classes of the target.

    Each episode comes from one source; an in-domain row's own data set has ``--in-domain-weight`` times the
    weight of each other source."""
    families = {}
    for name in row.sources:
        spec = load(name)
        classes = spec.classes("train") if row.in_domain and name == row.target else [
            c for s in ("train", "val", "test") for c in spec.classes(s)]
        families[name] = load(name, splits={"train": classes, "val": [], "test": []}, q_query=args.train_queries,
                              n_way=(min(5, len(classes)), min(args.train_ways, len(classes))), k_shot=args.train_shots,
                              class_names=args.class_names == "all" and name in NAMED)
    weights = [args.in_domain_weight if row.in_domain and name == row.target else 1.0 for name in row.sources]
    return mix(families, weights=weights, name="+".join(row.sources))


def target_for(row: Row, n_way: Optional[int], k_shot: int, class_names: bool = False):
    """The target's episodes: its test classes; validation on the classes no learner saw. None if N is too large.

    ``n_way=None``: the full-label family (every class, the official splits); None for a target without one or
    an in-domain row. ``class_names``: each class's name joins its support examples, where the data set has
    readable names."""
    if n_way is None:
        if row.in_domain or row.target not in FULL_LABEL:
            return None  # in-domain: meta-training read every official split of the target's training intents
        return load(FULL_LABEL[row.target], k_shot=k_shot, class_names=class_names and row.target in NAMED)
    spec = common.target_spec(row.target)
    train, val, test = (spec.classes(s) for s in ("train", "val", "test"))
    if not row.in_domain:
        train, val = [], train + val  # the whole data set is held out: every non-test class can validate
    if n_way > min(len(val), len(test)):
        return None
    return load(row.target, n_way=n_way, k_shot=k_shot, q_query=5, class_names=class_names and row.target in NAMED,
                splits={"train": train, "val": val, "test": test})


def adapter_settings(args) -> dict:
    return common.encoder_settings(args, quantization="nf4", compute_dtype=common.compute_dtype(args.compute_dtype),
                                   lora_r=args.lora_r, target_modules=args.lora_targets,
                                   support_temperature=args.support_temperature)


def check_adapters(args) -> None:
    """Refuse a bad ``--lora-r`` or ``--lora-targets`` before any work (the encoder is built from its config only)."""
    if args.lora_r < 1:
        raise SystemExit(f"--lora-r {args.lora_r} is invalid; give a positive rank (8 is the grid's)")
    from transformers import AutoConfig, AutoModel
    try:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(common.encoder_path()))
        check_target_modules(encoder, args.lora_targets)
    except ValueError as e:
        raise SystemExit(f"--lora-targets: {e}") from None


def train(row: Row, mixture, args, out: str) -> dict[str, metalearn.Learner]:
    """ProtoMAML and ProtoNet on the same episodes and budget; the foundation with a fresh LoRA for fine-tuning."""
    settings = common.meta_settings(adapter_settings(args), args)
    learners = common.protomaml_and_protonet(mixture, settings, args, out)
    settings.update(prompt_tokens=0)  # fine-tuning from the foundation: LoRA B = 0 is the frozen model itself
    learners["finetune"] = metalearn.fit(mixture, method="fomaml", inner_steps=1, meta_steps=0, **settings)
    return learners


def episodes_of(n_way: Optional[int], args) -> tuple[int, int]:
    """Test and validation tasks of a cell: ``--episodes`` / ``--val-episodes``, or per seed for full-label cells."""
    return (args.episodes, args.val_episodes) if n_way else (args.full_seeds, args.full_val_episodes)


def evaluate_cell(row: Row, learners: dict, family, n_way: Optional[int], k_shot: int, args,
                  out: str) -> tuple[list, dict]:
    """Every method on the cell's test episodes, then the guarded ProtoMAML; rows for the summary and the guard's
    record."""
    episodes, val_episodes = episodes_of(n_way, args)
    results = metalearn.evaluate(learners, family, baselines=BASELINES, steps=args.steps, episodes=episodes,
                                 lr_grid=args.lr_grid, val_episodes=val_episodes, seed=args.seed,
                                 reference="prototypes", progress=not args.quiet, workers=args.workers)
    return guarded_rows(row, results, learners["protomaml"], family, n_way, k_shot, args, out)


def guarded_rows(row: Row, results, meta, family, n_way: Optional[int], k_shot: int, args,
                 out: str) -> tuple[list, dict]:
    """The guarded ProtoMAML added to a cell's results (saved to its folder); the cell's summary rows and guard record.

    K >= 2: per task from its support folds, behind a verdict pooled over the cell's tasks' folds
    (``guard.decide_gated``); K = 1, and full-label cells (a 150-way task's folds would cost K more 150-way
    adaptations per seed): per target on the validation tasks (``guard.choose``).
    """
    episodes, val_episodes = episodes_of(n_way, args)
    cell = cell_name(row, n_way, k_shot)
    last = max(args.steps)
    tuned = [t["scale"] for t in results.tuning if t["method"] == "protomaml" and t["steps"] == last]
    scale = tuned[0] if tuned else 1.0
    if k_shot >= 2 and n_way is not None:
        choices, verdict = guard.decide_gated(meta, sample_tasks(family, "test", episodes, args.seed),
                                              steps=last, scale=scale, folds=args.guard_folds, workers=args.workers)
        record = {"kind": "per task (support folds), behind a verdict pooled over the tasks' folds",
                  "verdict": verdict["use"], "held_out_difference": verdict["held_out_difference"],
                  "ci95": verdict["ci95"],
                  "adapted": sum(c["use"] == "meta" for c in choices) / len(choices)}
    else:
        choice = guard.choose(meta, family, foundation="prototypes", steps=last,
                              episodes=args.guard_episodes if n_way else val_episodes, metric="accuracy",
                              seed=args.seed, scale=scale, workers=args.workers)
        choices = [choice] * episodes
        record = {"kind": "per target (validation " + ("classes)" if n_way else "queries)"), "adapted": float(choice["use"] == "meta"),
                  "val": choice["val"]}
    results = guard.combine(results, "protomaml", "prototypes", last, choices)
    results.save(cell_folder(out, row, n_way, k_shot))
    rows = common.accuracy_rows(results, cell=cell)
    rows += [{"cell": cell, "paired": True, **pair} for pair in versus_protonet(results.records, last)]
    print(f"\n## {cell}\n\n{results.table('accuracy')}\nguard: {record}")
    return rows, {cell: record}


def guard_again(summary: dict, args, out: str, rows_wanted: list[Row]) -> None:
    """Recompute the guarded rows of the finished cells of ``rows_wanted`` in ``out`` with today's guard, from each
    cell's saved results and its row's saved ProtoMAML (nothing else is re-run); rewrites summary.json. The
    per-target guards (K = 1, full-label) adapt again on their validation tasks."""
    wanted = {(r.target, r.in_domain) for r in rows_wanted}
    for cell in list(dict.fromkeys(r["cell"] for r in summary["rows"])):
        target, in_domain, n_way, k_shot = CELL.fullmatch(cell).groups()
        row, n_way, k_shot = Row(target, [], bool(in_domain)), None if n_way == "all" else int(n_way), int(k_shot)
        if (target, bool(in_domain)) not in wanted:
            continue  # other rows were not asked for
        row_dir = row_folder(out, row)
        results = EvalResults.load(cell_folder(row_dir, row, n_way, k_shot)).without("protomaml+guard")
        meta = metalearn.load(os.path.join(row_dir, "train_protomaml", "learner"))
        family = target_for(row, n_way, k_shot, getattr(args, "class_names", "none") != "none")  # older runs lack it
        rows, record = guarded_rows(row, results, meta, family, n_way, k_shot, args, row_dir)
        at = next(i for i, r in enumerate(summary["rows"]) if r["cell"] == cell)  # keep the table's cell order
        kept = [r for r in summary["rows"] if r["cell"] != cell]
        summary["rows"] = kept[:at] + rows + kept[at:]
        summary["guard"].update(record)
        common.write_json(os.path.join(out, "summary.json"), summary)


def cell_name(row: Row, n_way: Optional[int], k_shot: int) -> str:
    """'hwu64 5w1s'; 'hwu64 allw5s' for the full-label protocol."""
    return f"{row.label} {n_way or 'all'}w{k_shot}s"


def row_folder(out: str, row: Row) -> str:
    """Where a row's learners and cells are saved."""
    return os.path.join(out, row.target + ("_in" if row.in_domain else "_loo"))


def cell_folder(row_dir: str, row: Row, n_way: Optional[int], k_shot: int) -> str:
    """Where a cell's evaluation results are saved, inside its row's folder."""
    return os.path.join(row_dir, f"{row.target}{'_in' if row.in_domain else ''}_{n_way or 'all'}way_{k_shot}shot")


RUN_ARGS = {"quick", "output_dir", "targets", "in_domain", "settings", "threads", "workers", "quiet", "report_only",
            "guard_only", "resume", "argv"}
"""Arguments that say which cells to run and how fast, not what a cell computes: a resumed run may change them."""


def resumed(previous: dict, args) -> dict:
    """The summary of an earlier run to extend (``--resume``), if it computed its cells the way ``args`` would."""
    now = {k: v for k, v in vars(args).items() if k not in RUN_ARGS}
    added_later = {"class_names": "none", "in_domain_weight": 1.0,  # what runs from before these options computed
                   "lora_r": 8, "lora_targets": ["query", "value"], "full_seeds": 5, "full_val_episodes": 2}
    then = {**added_later, **{k: v for k, v in previous["args"].items() if k not in RUN_ARGS}}
    differ = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if differ:
        raise SystemExit(f"--resume: {args.output_dir} holds cells computed with other settings "
                         f"({', '.join(f'{k}={then.get(k)!r} there, {now.get(k)!r} here' for k in differ)}); "
                         "pass the same settings, or another --output-dir")
    previous.setdefault("runs", [{"argv": previous["args"]["argv"], "minutes": previous.get("minutes", 0.0)}])
    return previous


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


def parse(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    common.add_run_arguments(p, "runs/leave_one_out", "a tiny run (about a minute) that checks the path",
                             threads="torch intra-op threads")
    p.add_argument("--targets", default=",".join(DATASETS),
                   help="leave-one-out targets, comma separated; TARGET=SRC+SRC names the sources explicitly")
    p.add_argument("--in-domain", default="clinc150", help="the in-domain row's data set ('' to skip)")
    p.add_argument("--settings", default="5x1,5x5,15x1",
                   help="NxK settings (skipped where a split is too small); allxK: the full-label protocol "
                   f"({', '.join(FULL_LABEL)}, held out only)")
    p.add_argument("--full-seeds", type=int, default=5, help="full-label cells: seeds, one task each")
    p.add_argument("--full-val-episodes", type=int, default=2,
                   help="full-label cells: validation tasks (each queries the whole val split) for the "
                   "inner-lr search and the guard")
    common.add_encoder_arguments(p, episodes=600, episodes_help="paired test episodes per cell", val_episodes=50)
    p.add_argument("--train-episodes", type=int, default=300, help="meta-training episodes per method and row")
    p.add_argument("--in-domain-weight", type=float, default=1.0,
                   help="the in-domain row's own training classes: their share of meta-training episodes, "
                   "relative to each other source's")
    p.add_argument("--train-ways", type=int, default=10, help="largest N of meta-training episodes (from 5)")
    p.add_argument("--train-shots", type=int, nargs=2, default=[1, 5], help="K range of meta-training episodes")
    p.add_argument("--train-queries", type=int, default=5, help="query examples per class when meta-training")
    p.add_argument("--support-temperature", type=float, default=0.2,
                   help="cosine-head temperature of the inner loop's support loss (the head's own is 0.05, at "
                   "which a 1-shot support loss is ~0 and even a 5-shot one ~0.003)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-targets", nargs="+", default=["query", "value"],
                   help="the encoder's linear layers that get LoRA ('query key value output.dense "
                   "intermediate.dense': every projection of every block, not the unused pooler)")
    p.add_argument("--prompt-tokens", type=int, default=0,
                   help="soft prompt length; 0 (LoRA only, B = 0) starts meta-training at the frozen foundation")
    p.add_argument("--class-names", nargs="?", const="all", default="none", choices=["none", "test", "all"],
                   help="each class's name joins its support set as one more example, in the test episodes "
                   "('test') or in meta-training too ('all', the same as the bare flag); for "
                   f"{', '.join(NAMED)} (HuffPost's classes are numbers)")
    p.add_argument("--guard-folds", type=int, default=5, help="support folds of the per-task guard (K >= 2)")
    p.add_argument("--guard-episodes", type=int, default=100,
                   help="validation episodes of the per-target guard (K = 1)")
    p.add_argument("--report-only", action="store_true", help="redraw summary.md and the heat-map from summary.json")
    p.add_argument("--guard-only", action="store_true",
                   help="recompute the guarded rows of the finished cells in --output-dir (after a change to the "
                   "guard; of the rows --targets and --in-domain name), from their saved results and ProtoMAML "
                   "learners; pass the run's own settings")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells already in --output-dir's summary.json (run with the same settings) and "
                   "run only the missing ones (a row with a missing cell is meta-trained again)")
    args = p.parse_args(argv)
    args.argv = common.argv_of(argv)
    if args.quick:
        args.targets, args.in_domain, args.settings = "huffpost", "", "5x1,5x2"
        args.episodes, args.val_episodes, args.lr_grid, args.steps = 3, 2, [1.0], [0, 1]
        args.train_episodes, args.train_ways, args.train_shots = 2, 5, [1, 2]
        args.guard_episodes, args.guard_folds = 2, 2
    return args


def run(args, rows: list[Row], settings: list[tuple[int, int]], summary: dict) -> None:
    """Meta-train each row that has cells left to run, evaluate them, and add them to ``summary`` (saved after each)."""
    out = args.output_dir
    done = {r["cell"] for r in summary["rows"]}
    started = common.setup(args)
    this_run = {"argv": args.argv, "minutes": 0.0, "code": checkout()}  # listed once it has added a cell
    names = args.class_names != "none"  # in the test episodes, whether or not in meta-training
    for row in rows:
        todo = {}
        for n_way, k_shot in settings:
            family = None if cell_name(row, n_way, k_shot) in done else target_for(row, n_way, k_shot, names)
            if family is not None:
                todo[n_way, k_shot] = family
            elif cell_name(row, n_way, k_shot) not in done:
                why = (f"too few validation or test classes for {n_way}-way" if n_way else
                       "the in-domain row read every official split" if row.in_domain else
                       f"full-label cells exist for {', '.join(FULL_LABEL)}")
                print(f"skipping {cell_name(row, n_way, k_shot)}: {why}")
        if not todo:
            print(f"{row.label}: no cell left to run")
            continue
        mixture = sources_for(row, args)
        row_dir = row_folder(out, row)
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
            common.write_json(os.path.join(out, "summary.json"), summary)
    print("\n" + report(summary, out))
    print(f"wall time {(time.time() - started) / 60:.1f} min")


def main(argv=None) -> None:
    args = parse(argv)
    out = args.output_dir
    if args.report_only or args.guard_only:
        summary = common.read_json(os.path.join(out, "summary.json"))
        if args.guard_only:
            guard_again(summary, argparse.Namespace(**{**summary["args"], "workers": args.workers}), out,
                        parse_rows(args.targets, args.in_domain, list(DATASETS)))
        print(report(summary, out))
        return
    rows = parse_rows(args.targets, args.in_domain, list(DATASETS))  # bad input fails before any work
    settings = common.parse_settings(args.settings, full_label=True)
    if not args.in_domain_weight > 0:
        raise SystemExit(f"--in-domain-weight {args.in_domain_weight} is invalid; give a positive share (1 = as much "
                         "as each other source)")
    if args.full_seeds < 1 or args.full_val_episodes < 1:
        raise SystemExit(f"--full-seeds {args.full_seeds} / --full-val-episodes {args.full_val_episodes}: give "
                         "positive counts (5 seeds and 2 validation tasks are the defaults)")
    check_adapters(args)
    summary_path = os.path.join(out, "summary.json")
    summary = {"args": {k: v for k, v in vars(args).items()}, "rows": [], "guard": {}, "runs": []}
    if args.resume and os.path.exists(summary_path):
        # refused before any work if its cells were computed otherwise
        summary = resumed(common.read_json(summary_path), args)
    run(args, rows, settings, summary)


if __name__ == "__main__":
    main()
