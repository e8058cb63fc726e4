"""The model card ``Learner.save`` writes as ``README.md``, so a saved folder is a Hub-ready peft repo.

The card is rendered from plain data (:class:`CardData`: the config, what was adapted, the family and the
training curve) and, optionally, evaluation results, so this module knows neither the Learner nor the
evaluation harness.

As peft's own cards, it opens with Hub metadata (YAML front matter through huggingface_hub's
``ModelCardData``: ``library_name: peft``, ``base_model``, tags, pipeline tag), then says what the
folder holds and how to load it, with and without metalearn: the base model, the task family, the
method and its settings, the last values of the meta-training curve, the evaluation table when
``evaluate`` results are given (their files go to ``eval/``), and the whole config.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

from .config import RunConfig
from .saved import PROMPT_SUBFOLDER

__all__ = ["CARD_FILE", "EVAL_SUBFOLDER", "CardData", "Results", "describe_family", "hub_base_model", "render",
           "write"]

CARD_FILE = "README.md"
EVAL_SUBFOLDER = "eval"
CURVE_ROWS = 5  # the last meta-steps shown
CURVE_KEYS = (("query_loss", "query loss"), ("support_loss_first", "support loss (first step)"),
              ("grad_norm", "meta-grad norm"), ("meta_lr", "meta lr"), ("val_query_loss", "val query loss"))
PIPELINE_TAGS = {"causal": "text-generation", "seq2seq": "text2text-generation", "encoder": "feature-extraction"}
RESULT_FILES = ("results.json", "results.md")  # what EvalResults.save writes that the card needs


@dataclass
class CardData:
    """What the card says about a saved learner, as plain data.

    Attributes:
        config: the run's settings.
        model_type: ``"causal"``, ``"seq2seq"``, ``"encoder"`` or ``"module"``.
        lora: whether LoRA adapters are saved at the folder's root.
        prompt: whether a soft prompt is saved (in ``prompt/`` beside LoRA, or at the root).
        recorded_base: the base model name peft recorded in the adapter config, if any.
        family: the task family meta-trained on, described (``describe_family``), if known.
        history: meta-training log records, one per meta-step.
    """

    config: RunConfig
    model_type: str
    lora: bool = False
    prompt: bool = False
    recorded_base: Optional[str] = None
    family: Optional[str] = None
    history: list[dict] = field(default_factory=list)


class Results(Protocol):
    """Evaluation results the card can show (``metalearn.eval.EvalResults``)."""

    def table(self) -> str: ...

    def save(self, output_dir: str) -> Any: ...


def write(data: CardData, folder: str, results: Union[Results, str, None] = None) -> None:
    """Write ``folder/README.md`` (and ``prompt/README.md`` beside a LoRA root); ``results`` also to ``eval/``.

    ``results``: evaluation results (``EvalResults``), or the folder (or its ``results.json``) that
    ``EvalResults.save`` wrote, whose files are copied; a path is checked before anything is written.
    """
    table = _results_table(results, os.path.join(folder, EVAL_SUBFOLDER))
    with open(os.path.join(folder, CARD_FILE), "w", encoding="utf-8") as f:
        f.write(render(data, table))
    prompt_dir = os.path.join(folder, PROMPT_SUBFOLDER)
    if data.lora and os.path.isdir(prompt_dir):  # replaces peft's blank template there
        with open(os.path.join(prompt_dir, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(_front_matter(data) + "\nThe soft prompt of the meta-learned initialization one folder up; "
                    f"see [its card](../{CARD_FILE}).\n")


def _results_table(results: Union[Results, str, None], eval_dir: str) -> Optional[str]:
    """The results' markdown table, with their files written (or copied) to ``eval_dir``."""
    if results is None:
        return None
    if not isinstance(results, (str, os.PathLike)):
        if not (callable(getattr(results, "table", None)) and callable(getattr(results, "save", None))):
            raise TypeError(f"results must be EvalResults or the path of a results.json, not {type(results).__name__}")
        results.save(eval_dir)
        return results.table()
    source = os.fspath(results)
    source = source if os.path.isdir(source) else os.path.dirname(source) or "."
    try:
        with open(os.path.join(source, "results.json"), encoding="utf-8") as f:
            missing = {"records", "summary", "paired", "tuning", "settings"} - set(json.load(f))
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        with open(os.path.join(source, "results.md"), encoding="utf-8") as f:
            table = f.read().rstrip("\n")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"results={results!r} is not an evaluation written by EvalResults.save ({err}); pass the "
                         "EvalResults itself or the folder it was saved to") from None
    shutil.copytree(source, eval_dir, dirs_exist_ok=True)
    return table


def hub_base_model(data: CardData) -> Optional[str]:
    """The base model's Hub id, or None (built in memory, or a local folder: not a Hub reference)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = data.config.base.name_or_path or data.recorded_base  # recorded: the name of a base passed in memory
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


def render(data: CardData, table: Optional[str] = None) -> str:
    """The card's text: front matter, then markdown (with an evaluation ``table`` when given)."""
    config = data.config
    name = hub_base_model(data) or config.base.name_or_path
    base = f"`{name}`" if name else "model built in memory"
    what = _what(data)
    lines = [_front_matter(data), f"# {what[0].upper() + what[1:]}, meta-learned with {config.outer.method}", "",
             f"An initialization of {what} on the frozen{_quant(data)} {base}, meta-learned with metalearn "
             f"({config.outer.method}) so that a new task of the family below adapts in a few steps from a few "
             "examples.", "",
             "## Use it", "", "```python", "import metalearn", "",
             'learner = metalearn.load("PATH")  # this folder; pass model=... for a base built in memory',
             "adapted = learner.adapt(task_support, steps=5)", "adapted.predict(task_query)", "```", ""]
    if data.lora or data.prompt:
        lines += ["With peft alone (the meta-learned initialization itself, without adaptation):", "", "```python",
                  "from peft import PeftModel", ""]
        if data.lora:
            lines.append('model = PeftModel.from_pretrained(base, "PATH")  # LoRA')
            if data.prompt:
                lines.append('model = PeftModel.from_pretrained(model.base_model.model, "PATH/prompt")  # soft prompt')
        else:
            lines.append('model = PeftModel.from_pretrained(base, "PATH")  # soft prompt')
        lines += ["```", ""]
    lines += ["## Meta-training", "", "| setting | value |", "|---|---|",
              f"| task family | {data.family or 'not recorded'} |",
              f"| base model | {base}{_quant(data)} |", f"| meta-learned | {what} |",
              f"| method | {config.outer.method} |",
              f"| inner loop | {config.inner.steps} step(s) of {config.inner.optimizer}, lr {config.inner.lr:g}, "
              f"{config.inner.order} order |",
              f"| outer loop | {config.outer.meta_steps} meta-steps of {config.outer.meta_batch} tasks, "
              f"{config.outer.optimizer} lr {config.outer.lr:g} ({config.outer.schedule}), seed {config.outer.seed} |",
              ""]
    lines += _curve(data.history)
    if table is not None:
        lines += [table, "", f"Files: `{EVAL_SUBFOLDER}/` (results.json, CSV, plots).", ""]
    lines += ["## Config", "", "`metalearn.json` holds it; every field:", "", "```json",
              json.dumps(config.to_dict(), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _front_matter(data: CardData) -> str:
    from huggingface_hub import ModelCardData

    config = data.config
    base = hub_base_model(data)
    tags = ["metalearn", "meta-learning", config.outer.method]
    tags += ["lora"] * data.lora + ["prompt-tuning"] * data.prompt
    if config.base.quantization:
        tags.append(config.base.quantization)
    if base:
        tags.append(f"base_model:adapter:{base}")
    card = ModelCardData(library_name="peft" if data.lora or data.prompt else None, base_model=base, tags=tags,
                         pipeline_tag=PIPELINE_TAGS.get(data.model_type))
    return f"---\n{card.to_yaml()}\n---\n"


def _what(data: CardData) -> str:
    adapter = data.config.adapter
    parts = []
    if data.lora:
        parts.append(f"LoRA (r={adapter.lora_r}" + (f" on {', '.join(adapter.target_modules)})"
                                                    if adapter.target_modules else ")"))
    if data.prompt:
        parts.append(f"a {adapter.prompt_tokens}-token soft prompt")
    if adapter.head:
        parts.append(f"a {adapter.head} head")
    if not parts:
        parts.append("all the model's weights")
    if data.config.inner.learn_step_sizes:
        parts.append("per-tensor step sizes")
    return " + ".join(parts)


def _quant(data: CardData) -> str:
    q = data.config.base.quantization
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
