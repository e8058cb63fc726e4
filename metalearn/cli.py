"""The ``metalearn`` command: ``fit`` a config, ``eval`` saved learners against baselines, run the ``demo``.

Thin over ``metalearn.fit``, ``metalearn.load`` and ``metalearn.evaluate``; every option is explained by
``metalearn <command> --help``. Bad input exits with status 2 and one line naming the problem and the fix.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

import yaml

from .config import METHODS
from .files import Locked

__all__ = ["build_model", "load_run_config", "main"]

RUN_FILE = "run.json"  # written by `metalearn fit` beside the learner, so `eval` can rebuild the model
RUN_KEYS = ("family", "fit", "model", "output_dir", "recipe")
BUILT_MODELS = ("mlp", "tiny-llama")

FIT_EXAMPLE = """\
example config (YAML or JSON):

  family: sinusoid                 # a built-in spec name or a spec YAML path; or {name: clinc150, n_way: 5}
  model: mlp                       # mlp | tiny-llama | a Hugging Face id or local model folder
                                   # or {name: tiny-llama, hidden_size: 64, layers: 2, seed: 0}
  fit:                             # keyword overrides of metalearn.fit (see metalearn.make_config)
    method: maml                   # {methods}
    inner_steps: 1
    inner_lr: 0.01
    meta_steps: 1000
    meta_batch: 8
    meta_lr: 0.001
    # report_to: [tensorboard]     # optional: log every meta-step to tensorboard | wandb | mlflow
    # config: {...}                # optional: a whole RunConfig dict the keys above override
    # resume: runs/x               # optional: continue a checkpointed run (its folder)
  output_dir: runs/sinusoid-maml   # log.jsonl, training_curve.png, learner/ and run.json go here
  recipe: {tolerance: 0.02}        # optional: after training, choose adapt()'s test-time steps and step
                                   # size on val tasks and save them with the learner (metalearn.tune_recipe
                                   # keywords; `recipe: true` for its defaults)
""".replace("{methods}", " | ".join(METHODS))


# ---------------------------------------------------------------- models and configs


def build_model(spec: Any):
    """``(model, model_name)`` from a model spec: a built tiny model, or ``(None, name_or_path)`` to load.

    ``"mlp"`` is the sinusoid MLP (1-40-40-1 by default; options ``hidden``, ``inputs``, ``outputs``,
    ``seed``); ``"tiny-llama"`` a randomly initialized Llama built from a config with a byte-level
    tokenizer (options of ``metalearn.foundation.tiny_llama``). Both are rebuilt bit-for-bit from their seed.
    """
    import torch
    from torch import nn

    name, options = (spec, {}) if isinstance(spec, str) else (dict(spec or {}).pop("name", None), dict(spec or {}))
    options.pop("name", None)
    if not name:
        raise ValueError(f"model {spec!r} has no name; give 'mlp', 'tiny-llama', a Hugging Face id or a folder")
    if name == "mlp":
        known = {"hidden", "inputs", "outputs", "seed"}
        _no_unknown(options, known, "mlp model")
        torch.manual_seed(int(options.get("seed", 0)))
        sizes = [int(options.get("inputs", 1)), *[int(h) for h in options.get("hidden", (40, 40))],
                 int(options.get("outputs", 1))]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1]), None
    if name == "tiny-llama":
        from .foundation import tiny_llama

        kwargs = {"vocab_size": 128, "hidden_size": 64, "layers": 2, "heads": 2, "seed": 0}
        _no_unknown(options, set(kwargs), "tiny-llama model")
        kwargs.update(options)
        return tiny_llama(**kwargs), None
    if options:
        raise ValueError(f"model {name!r} is loaded by name; options {sorted(options)} apply only to {BUILT_MODELS}")
    return None, name


def _no_unknown(options: dict, known: set, what: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown}; known: {sorted(known)}")


def load_run_config(path: str) -> dict:
    """Read and check a ``metalearn fit`` config file (YAML or JSON)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist; give a YAML or JSON file (see metalearn fit --help)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path!r} cannot be parsed: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config file {path!r} must hold a mapping with keys {list(RUN_KEYS)}")
    _no_unknown(config, set(RUN_KEYS), f"config file {path!r}")
    for key in ("family", "model"):
        if key not in config:
            raise ValueError(f"config file {path!r} lacks {key!r}; see the example in metalearn fit --help")
    if not isinstance(config.get("fit", {}) or {}, dict):
        raise ValueError(f"config file {path!r}: 'fit' must be a mapping of metalearn.fit settings")
    recipe_options(config, path)  # checked before any work
    return config


def recipe_options(config: dict, path: str) -> Optional[dict]:
    """The config's ``recipe`` as ``tune_recipe`` keywords (``true``: its defaults), or None for no recipe."""
    from .eval.recipe import check_recipe_options

    recipe = config.get("recipe", False)
    if recipe is False or recipe is None:
        return None
    if recipe is True:
        return {}
    if not isinstance(recipe, dict):
        raise ValueError(f"config file {path!r}: 'recipe' must be true or a mapping of metalearn.tune_recipe "
                         f"keywords, e.g. {{tolerance: 0.02}}; got {recipe!r}")
    known = set(inspect.signature(check_recipe_options).parameters)
    _no_unknown(recipe, known, f"config file {path!r}: recipe")
    try:
        check_recipe_options(**recipe)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config file {path!r}: recipe: {err}") from None
    return dict(recipe)


def family_spec(spec: Any, extra: Optional[dict] = None) -> tuple[str, dict]:
    """``(name_or_path, overrides)`` from ``"sinusoid"`` or ``{name: clinc150, n_way: 5}``."""
    if isinstance(spec, str):
        name, overrides = spec, {}
    elif isinstance(spec, dict) and spec.get("name"):
        overrides = dict(spec)
        name = overrides.pop("name")
    else:
        raise ValueError(f"family {spec!r} is invalid; give a spec name (e.g. 'sinusoid'), a YAML path, or "
                         "{name: ..., <overrides>}")
    overrides.update(extra or {})
    return name, overrides


def load_family(spec: Any, extra: Optional[dict] = None):
    from . import tasks

    name, overrides = family_spec(spec, extra)
    return tasks.load(name, **overrides)


# ---------------------------------------------------------------- commands


def cmd_fit(args: argparse.Namespace) -> int:
    import metalearn

    config = load_run_config(args.config)
    output_dir = args.output_dir or config.get("output_dir")
    if not output_dir:
        raise ValueError("no output folder: set output_dir in the config or pass --output-dir")
    family = load_family(config["family"])
    model, model_name = build_model(config["model"])
    overrides = dict(config.get("fit") or {})
    special = {k: overrides.pop(k) for k in ("config", "resume") if k in overrides}  # fit() arguments, not settings
    if model_name is not None:
        overrides.setdefault("model_name", model_name)
    metalearn.make_config(special.get("config"), **overrides)  # validate every setting before any work
    recipe = recipe_options(config, args.config)
    learner = metalearn.fit(family, model=model, output_dir=output_dir, progress=not args.quiet, **special,
                            **overrides)
    saved = os.path.join(output_dir, "learner")
    if recipe is not None:
        chosen = metalearn.tune_recipe(learner, family, **recipe)
        learner.save(saved)  # again, with its recipe: load(saved).adapt(support) runs it
        print(f"recipe (chosen on {chosen.chosen_on['val_episodes']} val tasks): {chosen.steps} test-time steps, "
              f"step size x{chosen.scale:g}, guard {'on' if chosen.guard else 'off'}")
    from .files import atomic_write

    run = {"family": config["family"], "model": config["model"], "fit": config.get("fit") or {},
           "output_dir": output_dir, **({"recipe": config["recipe"]} if recipe is not None else {})}
    atomic_write(os.path.join(output_dir, RUN_FILE), json.dumps(run, indent=2))
    last = learner.history[-1] if learner.history else {}
    print(f"saved the learner to {saved} "
          f"({len(learner.history)} meta-steps, last query loss {last.get('query_loss', float('nan')):.4f})")
    return 0


def _parse_learner(text: str) -> tuple[Optional[str], str]:
    name, sep, path = text.partition("=")
    return (name, path) if sep and name and not os.path.exists(text) else (None, text)


def _load_learner(path: str, model_override: Any):
    """A Learner from a `metalearn fit` run folder (learner/ + run.json) or a saved learner folder."""
    import metalearn

    run_path = os.path.join(path, RUN_FILE)
    run = None
    if os.path.isfile(run_path):
        run = _read_run(run_path)
        path = os.path.join(path, "learner")
    spec = model_override or (run or {}).get("model")
    model = None
    if spec is not None:
        model, name = build_model(spec)
        if name is not None and model_override:
            raise ValueError(f"--model {name!r}: a saved learner loads its base by the name it was saved with; "
                             "--model only rebuilds 'mlp' or 'tiny-llama' bases")
    return metalearn.load(path, model=model), run


def _read_run(run_path: str) -> dict:
    """The run.json `metalearn fit` wrote, with an error naming the file and the fix if it is damaged."""
    fix = ("rewrite it as the JSON mapping `metalearn fit` writes (keys family, model, fit, output_dir), or pass "
           "the learner/ folder beside it with --model and --family")
    try:
        with open(run_path, encoding="utf-8") as f:
            run = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{run_path} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(run, dict) or "model" not in run:
        raise ValueError(f"{run_path} lacks the 'model' entry; {fix}")
    return run


def _model_option(text: Optional[str]) -> Any:
    """``--model``: a name (``mlp``, ``tiny-llama``) or a YAML mapping such as ``{name: tiny-llama, layers: 2}``."""
    if text is None:
        return None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"--model {text!r} is not valid YAML ({str(err).splitlines()[0]}); give a name such as "
                         "tiny-llama or a mapping such as '{name: tiny-llama, hidden_size: 64}'") from None
    if isinstance(spec, dict):
        return spec
    if text.lstrip().startswith(("{", "[")) or isinstance(spec, list):
        raise ValueError(f"--model {text!r} must be a name or a YAML mapping with a name, e.g. "
                         "'{name: tiny-llama, hidden_size: 64}'")
    return text


def cmd_eval(args: argparse.Namespace) -> int:
    from . import tasks
    from .eval import evaluate

    steps, shots = _ints(args.steps, "--steps"), (_ints(args.shots, "--shots") if args.shots is not None else None)
    baselines = [b.strip() for b in (args.baselines or "").split(",") if b.strip()]
    grid = None if args.lr_grid.strip().lower() == "none" else _floats(args.lr_grid, "--lr-grid")
    extra = dict(_key_value(kv) for kv in args.family_set)
    setfit = _setfit_options(args.setfit_set)
    model = _model_option(args.model)
    if not args.learner and not args.base:
        raise ValueError("nothing to evaluate: give --learner DIR (scored with the baselines), or --base DIR with "
                         "--baselines (the baselines alone, on that learner's frozen model)")
    if args.base and not baselines:
        raise ValueError("--base gives the baselines their frozen model; name them with --baselines, e.g. "
                         "--baselines prototypes,random_init")
    folders = [(f"--learner {item!r}", _parse_learner(item)[1]) for item in args.learner]
    for option, path in folders + ([(f"--base {args.base!r}", args.base)] if args.base else []):
        if not os.path.isdir(path):
            raise ValueError(f"{option}: {path!r} is not a folder; give a `metalearn fit` output folder or a saved "
                             "learner folder")
    base, base_run = _load_learner(args.base, model) if args.base else (None, None)
    learners, runs = {}, [base_run]
    for item in args.learner:
        name, path = _parse_learner(item)
        learner, run = _load_learner(path, model)
        runs.append(run)
        name = name or learner.config.outer.method
        base_name, i = name, 2
        while name in learners:
            name, i = f"{base_name}-{i}", i + 1
        learners[name] = learner
    family_arg = args.family or next((r["family"] for r in runs if r), None)
    if family_arg is None:
        raise ValueError("no family: pass --family (a spec name or YAML path); saved learners do not record one")
    name, overrides = family_spec(family_arg, extra)
    family: Any = tasks.load(name, **overrides)
    if shots is not None:
        family = _factory(name, overrides)
    results = evaluate(learners or None, family, baselines=baselines, base=base, steps=steps, shots=shots,
                       episodes=args.episodes,
                       reference=args.reference, seed=args.seed, lr_grid=grid, val_episodes=args.val_episodes,
                       generate=not args.no_generate, max_new_tokens=args.max_new_tokens,
                       output_dir=args.output_dir, progress=not args.quiet, workers=args.workers,
                       setfit=setfit)
    print(results.table())
    if args.output_dir:
        print(f"\nresults, CSV and plots written to {args.output_dir}")
    return 0


def _setfit_options(items: Sequence[str]) -> Any:
    """``--setfit-set KEY=VALUE`` items as SetFitOptions (values read as YAML scalars), or None."""
    if not items:
        return None
    from .eval import SetFitOptions

    values = dict(_key_value(kv) for kv in items)
    try:
        return SetFitOptions(**values)
    except TypeError as err:
        raise ValueError(f"--setfit-set: {err}; the options are SetFitOptions' fields") from None


def _factory(name: str, overrides: dict) -> Callable[[int], Any]:
    from . import tasks

    return lambda k: tasks.load(name, **{**overrides, "k_shot": k})


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, quick=args.quick, seed=args.seed, llama=not args.skip_llama, progress=not args.quiet)
    return 0


# ---------------------------------------------------------------- argument parsing


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r} is invalid; give comma-separated integers, e.g. 0,1,5,10") from None


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r} is invalid; give comma-separated numbers, e.g. 0.3,1,3") from None


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--family-set {text!r} is invalid; write KEY=VALUE, e.g. n_way=10")
    return key, yaml.safe_load(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metalearn", description="Meta-learn LoRA / soft-prompt initializations on "
                                "frozen (4-bit) models, and evaluate them fairly against baselines.")
    sub = p.add_subparsers(dest="command", metavar="{fit,eval,demo}")

    f = sub.add_parser("fit", help="meta-train a learner from a YAML/JSON config", epilog=FIT_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Meta-train on a task family's train split and save the learner.")
    f.add_argument("config", help="YAML or JSON file with keys family, model, fit (metalearn.fit overrides) and "
                   "output_dir (see the example below)")
    f.add_argument("--output-dir", help="where to write log.jsonl, training_curve.png, learner/ and run.json "
                   "(overrides output_dir in the config)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=cmd_fit)

    e = sub.add_parser("eval", help="evaluate saved learners and baselines on held-out tasks",
                       description="Adapt every learner and baseline on the same held-out test episodes and score "
                       "them: mean ± 95% CI (t·std/√n; 1.96 at 600 episodes), paired differences, JSON/CSV/markdown/PNG.")
    e.add_argument("--learner", action="append", default=[], metavar="[NAME=]DIR",
                   help="a `metalearn fit` output folder (model rebuilt from its run.json) or a saved learner "
                   "folder; repeat for several; NAME defaults to the learner's method")
    e.add_argument("--base", metavar="DIR", help="a learner folder (as --learner) whose frozen model the "
                   "baselines use, not scored itself; with no --learner, only the baselines run (default: the first "
                   "--learner)")
    e.add_argument("--family", help="task family: a built-in spec name (e.g. clinc150, text_rules) or a spec YAML "
                   "path; default: the family of the first fit run")
    e.add_argument("--family-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a family setting (YAML value), e.g. n_way=10; repeatable")
    e.add_argument("--model", help="rebuild the base as 'mlp' or 'tiny-llama' (or a YAML mapping with options) "
                   "for learners saved without a run.json")
    e.add_argument("--steps", default="0,1,2,5,10", help="inner-step counts to score after, comma-separated "
                   "(default: %(default)s)")
    e.add_argument("--shots", help="support sizes K, comma-separated, e.g. 1,5 (the family is rebuilt with "
                   "k_shot=K); default: the family's own K")
    e.add_argument("--episodes", type=int, help="test episodes per shot count (default: 600; 100 for generation)")
    e.add_argument("--baselines", default="", help="comma-separated: zero_shot, in_context (causal LMs), "
                   "prototypes and linear_probe (encoders), random_init (fresh PEFT, same steps), setfit (SetFit "
                   "per episode from the learner's encoder; pip install 'metalearn[setfit]')")
    e.add_argument("--setfit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a SetFit training option (SetFitOptions field), e.g. num_iterations=20; repeatable")
    e.add_argument("--workers", type=int, default=1, help="forked processes sharing the test episodes "
                   "(default: %(default)s)")
    e.add_argument("--reference", help="method that paired differences are taken against (default: random_init "
                   "when it runs)")
    e.add_argument("--lr-grid", default="0.1,0.3,1,3,10", help="multipliers of each method's inner step sizes "
                   "tried on the val split, per method and step count; 'none' turns the search off "
                   "(default: %(default)s)")
    e.add_argument("--val-episodes", type=int, default=16, help="val episodes for the learning-rate search "
                   "(default: %(default)s)")
    e.add_argument("--seed", type=int, default=0, help="seed of the test (seed) and val (seed+1) episodes "
                   "(default: %(default)s)")
    e.add_argument("--no-generate", action="store_true", help="skip greedy decoding (generation: NLL only)")
    e.add_argument("--max-new-tokens", type=int, help="greedy decoding budget (default: from the support set)")
    e.add_argument("--output-dir", help="write results.json, summary/paired/episodes CSV, results.md and PNGs here")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=cmd_eval)

    d = sub.add_parser("demo", help="offline CPU demo: sinusoid MLP and a tiny NF4 Llama, vs baselines",
                       description="Meta-train Meta-SGD on sinusoids (MLP 1-40-40-1) and compare it with random "
                       "init and multi-task init at 0/1/5/10 steps; then meta-learn (MAML) LoRA + a soft prompt on a tiny "
                       "NF4 Llama, pretrained here on letter-substitution tables and cached, and show it learn a new "
                       "table from 8 examples, vs random-init PEFT, the frozen base and in-context examples. Prints "
                       "markdown with each part's run time; writes JSON, CSV and PNG plots. The first run pretrains and caches the tiny base "
                       "($METALEARN_CACHE or ~/.cache/metalearn); later runs load it.")
    d.add_argument("--output-dir", default=os.path.join("runs", "demo"), help="where results go "
                   "(default: %(default)s)")
    d.add_argument("--quick", action="store_true", help="small budgets: about a minute once its tiny base and init "
                   "are cached (the first run trains them: a few minutes); the numbers are rough")
    d.add_argument("--skip-llama", action="store_true", help="run only the sinusoid part")
    d.add_argument("--seed", type=int, default=0, help="seed of training and evaluation (default: %(default)s)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``metalearn`` console script; returns the exit status."""
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "command", None):
        p.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, Locked) as err:
        print(f"metalearn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
