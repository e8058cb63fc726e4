"""The model card ``Learner.save`` writes as ``README.md``, so a saved folder is a Hub-ready peft repo.

As peft's own cards, it opens with Hub metadata (YAML front matter through huggingface_hub's
``ModelCardData``: ``library_name: peft``, ``base_model``, tags, pipeline tag), then says what the
folder holds and how to load it, with and without metalearn: the base model, the task family, the
method and its settings, the last values of the meta-training curve, the evaluation table when
``evaluate`` results are given (their files go to ``eval/``), and the whole config.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from .eval.evaluate import EvalResults
    from .learner import Learner

__all__ = ["CARD_FILE", "EVAL_SUBFOLDER", "describe_family", "hub_base_model", "read_results", "render", "write"]

CARD_FILE = "README.md"
EVAL_SUBFOLDER = "eval"
CURVE_ROWS = 5  # the last meta-steps shown
CURVE_KEYS = (("query_loss", "query loss"), ("support_loss_first", "support loss (first step)"),
              ("grad_norm", "meta-grad norm"), ("meta_lr", "meta lr"), ("val_query_loss", "val query loss"))
PIPELINE_TAGS = {"causal": "text-generation", "seq2seq": "text2text-generation", "encoder": "feature-extraction"}


def write(learner: "Learner", folder: str, results: Union["EvalResults", str, None] = None) -> None:
    """Write ``folder/README.md`` (and ``prompt/README.md`` beside a LoRA root); ``results`` also to ``eval/``."""
    results = read_results(results)
    if results is not None:
        results.save(os.path.join(folder, EVAL_SUBFOLDER))
    with open(os.path.join(folder, CARD_FILE), "w", encoding="utf-8") as f:
        f.write(render(learner, results))
    from .adapters import PROMPT_SUBFOLDER

    prompt_dir = os.path.join(folder, PROMPT_SUBFOLDER)
    if learner.adapted.lora is not None and os.path.isdir(prompt_dir):  # replaces peft's blank template there
        with open(os.path.join(prompt_dir, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(_front_matter(learner) + "\nThe soft prompt of the meta-learned initialization one folder up; "
                    f"see [its card](../{CARD_FILE}).\n")


def read_results(results: Union["EvalResults", str, None]) -> Optional["EvalResults"]:
    """``EvalResults``, or ``results.json`` (or a folder holding it) written by ``EvalResults.save``."""
    from .eval.evaluate import EvalResults

    if results is None or isinstance(results, EvalResults):
        return results
    if not isinstance(results, (str, os.PathLike)):
        raise TypeError(f"results must be EvalResults or the path of a results.json, not {type(results).__name__}")
    path = os.path.join(results, "results.json") if os.path.isdir(results) else os.fspath(results)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return EvalResults(**{k: data[k] for k in ("records", "summary", "paired", "tuning", "settings")})
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"results={results!r} is not an evaluation written by EvalResults.save ({err}); pass the "
                         "EvalResults itself or the folder it was saved to") from None


def hub_base_model(learner: "Learner") -> Optional[str]:
    """The base model's Hub id, or None (built in memory, or a local folder: not a Hub reference)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    peft_model = learner.adapted.lora if learner.adapted.lora is not None else learner.adapted.prompt
    recorded = peft_model.peft_config["default"].base_model_name_or_path if peft_model is not None else None
    name = learner.config.base.name_or_path or recorded  # recorded: the name of a base passed in memory
    if not name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def describe_family(family: Any) -> str:
    """A one-line name for a task family: its ``name``, or its ``repr`` when the class defines one."""
    name = getattr(family, "name", None)
    text = repr(family) if type(family).__repr__ is not object.__repr__ else type(family).__name__
    return text if not name or str(name) in text else f"{name}: {text}"


def render(learner: "Learner", results: Optional["EvalResults"] = None) -> str:
    """The card's text: front matter, then markdown."""
    config = learner.config
    name = hub_base_model(learner) or config.base.name_or_path
    base = f"`{name}`" if name else "model built in memory"
    what = _what(learner)
    lines = [_front_matter(learner), f"# {what[0].upper() + what[1:]}, meta-learned with {config.outer.method}", "",
             f"An initialization of {what} on the frozen{_quant(learner)} {base}, meta-learned with metalearn "
             f"({config.outer.method}) so that a new task of the family below adapts in a few steps from a few "
             "examples.", "",
             "## Use it", "", "```python", "import metalearn", "",
             'learner = metalearn.load("PATH")  # this folder; pass model=... for a base built in memory',
             "adapted = learner.adapt(task_support, steps=5)", "adapted.predict(task_query)", "```", ""]
    if learner.adapted.lora is not None or learner.adapted.prompt is not None:
        lines += ["With peft alone (the meta-learned initialization itself, without adaptation):", "", "```python",
                  "from peft import PeftModel", ""]
        if learner.adapted.lora is not None:
            lines.append('model = PeftModel.from_pretrained(base, "PATH")  # LoRA')
            if learner.adapted.prompt is not None:
                lines.append('model = PeftModel.from_pretrained(model.base_model.model, "PATH/prompt")  # soft prompt')
        else:
            lines.append('model = PeftModel.from_pretrained(base, "PATH")  # soft prompt')
        lines += ["```", ""]
    lines += ["## Meta-training", "", "| setting | value |", "|---|---|",
              f"| task family | {learner.family or 'not recorded'} |",
              f"| base model | {base}{_quant(learner)} |", f"| meta-learned | {what} |",
              f"| method | {config.outer.method} |",
              f"| inner loop | {config.inner.steps} step(s) of {config.inner.optimizer}, lr {config.inner.lr:g}, "
              f"{config.inner.order} order |",
              f"| outer loop | {config.outer.meta_steps} meta-steps of {config.outer.meta_batch} tasks, "
              f"{config.outer.optimizer} lr {config.outer.lr:g} ({config.outer.schedule}), seed {config.outer.seed} |",
              ""]
    lines += _curve(learner.history)
    if results is not None:
        lines += [results.table(), "", f"Files: `{EVAL_SUBFOLDER}/` (results.json, CSV, plots).", ""]
    lines += ["## Config", "", "`metalearn.json` holds it; every field:", "", "```json",
              json.dumps(config.to_dict(), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _front_matter(learner: "Learner") -> str:
    from huggingface_hub import ModelCardData

    adapted, config = learner.adapted, learner.config
    base = hub_base_model(learner)
    tags = ["metalearn", "meta-learning", config.outer.method]
    tags += ["lora"] * (adapted.lora is not None) + ["prompt-tuning"] * (adapted.prompt is not None)
    if config.base.quantization:
        tags.append(config.base.quantization)
    if base:
        tags.append(f"base_model:adapter:{base}")
    peft = adapted.lora is not None or adapted.prompt is not None
    data = ModelCardData(library_name="peft" if peft else None, base_model=base, tags=tags,
                         pipeline_tag=PIPELINE_TAGS.get(learner.model.model_type))
    return f"---\n{data.to_yaml()}\n---\n"


def _what(learner: "Learner") -> str:
    adapter = learner.config.adapter
    parts = []
    if learner.adapted.lora is not None:
        parts.append(f"LoRA (r={adapter.lora_r}" + (f" on {', '.join(adapter.target_modules)})"
                                                    if adapter.target_modules else ")"))
    if learner.adapted.prompt is not None:
        parts.append(f"a {adapter.prompt_tokens}-token soft prompt")
    if adapter.head:
        parts.append(f"a {adapter.head} head")
    if not parts:
        parts.append("all the model's weights")
    if learner.config.inner.learn_step_sizes:
        parts.append("per-tensor step sizes")
    return " + ".join(parts)


def _quant(learner: "Learner") -> str:
    q = learner.config.base.quantization
    return {"nf4": " (4-bit NF4)", "int8": " (int8)"}.get(q, "") if q else ""


def _curve(history: list[dict]) -> list[str]:
    if not history:
        return ["The meta-training curve was not recorded (a learner loaded from disk, or no meta-steps).", ""]
    rows = history[-CURVE_ROWS:]
    keys = [(k, label) for k, label in CURVE_KEYS if any(k in r for r in rows)]
    out = [f"Last {len(rows)} of {len(history)} meta-steps (the curve's end; means over each meta-batch):", "",
           "| meta-step | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "" for k, _ in keys]
        out.append(f"| {r['step']}{' (skipped)' if 'skipped' in r else ''} | " + " | ".join(cells) + " |")
    return out + [""]
