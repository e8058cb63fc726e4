"""The frozen encoder on the full-label protocol, in full precision: cosine prototypes and a logistic-regression probe.

all-MiniLM-L6-v2 without quantization (the leave-one-out run's frozen rows are its NF4 base), on
``clinc150_full`` and ``hwu64_full``: every class in one task, K support examples per class from the official
train split, the whole official test split as queries, one task per seed. Nothing is trained: it is the
floor every adapted method must clear, and what the NF4 base costs at 150 ways.

    python -m experiments.frozen_full_label --quick     # one seed of HWU64 at 5 shots (CI)
    python -m experiments.frozen_full_label --output-dir runs/frozen_full_label   # 5 seeds, 5 and 10 shots

Writes each target's harness files under ``--output-dir`` and ``table.md``/``results.json`` with the accuracies.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import metalearn
from experiments import common
from metalearn.tasks import load

TARGETS = ("clinc150_full", "hwu64_full")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = common.parser(__doc__)
    common.add_run_arguments(p, "runs/frozen_full_label", "one seed of HWU64 at 5 shots")
    p.add_argument("--seeds", type=int, default=5, help="tasks (one per seed) per target and K")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="support examples per class")
    args = p.parse_args(common.argv_of(argv))
    targets = TARGETS[1:] if args.quick else TARGETS
    if args.quick:
        args.seeds, args.shots = 1, [5]
    if args.seeds < 1 or min(args.shots) < 1:
        p.error("--seeds and --shots must be positive")
    start = common.setup(args)
    # The learner only carries the frozen full-precision base: its baselines score the encoder as it is.
    learner = metalearn.fit(load("clinc150"), model_name=common.encoder_path(), head="prototype",
                            head_metric="cosine", head_temperature=0.05, method="protonet", meta_steps=0,
                            lora_r=8, target_modules=["query", "value"], seed=args.seed)
    rows = []
    for name in targets:
        results = metalearn.evaluate({}, lambda k, n=name: load(n, k_shot=k), shots=args.shots, steps=[0],
                                     baselines=["prototypes", "linear_probe"], base=learner, episodes=args.seeds,
                                     lr_grid=None, reference="prototypes", seed=args.seed, progress=not args.quiet,
                                     output_dir=os.path.join(args.output_dir, name))
        rows += [{"target": name, **r} for r in common.accuracy_rows(results, cell=name)]
    lines = ["# The frozen encoder in full precision, full-label protocol", "",
             f"`{common.command('frozen_full_label', common.argv_of(argv))}` — {(time.time() - start) / 60:.1f} min",
             "", "| target | method | K | accuracy (95% CI) | tasks |", "|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['method']} | {r['shots']} | {common.mean_ci(r['mean'], r['ci95'])} | {r['n']} |"
              for r in rows if not r.get("paired")]
    return common.write_report(args.output_dir, "\n".join(lines) + "\n", {"rows": rows})


if __name__ == "__main__":
    main()
