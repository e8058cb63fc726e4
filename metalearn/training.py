"""``metalearn.fit``: the outer loop from a task family to a meta-learned initialization.

family ─sample─▶ tasks ─encode─▶ episodes ─algorithm─▶ per-task meta-gradients ─average─▶ AdamW step.
With ``task_batching="off"`` each task's graph is freed right after its gradient, so memory does not
grow with the meta-batch; the batched default trades memory (about linear in the meta-batch, or in
``inner.task_chunk`` tasks when set) for speed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from . import algorithms, checkpoint, distributed, meta_optimizer, nonfinite, runlock, tracking
from .build import build_learner, needs_second_order
from .card import describe_family
from .config import AdapterConfig, BaseConfig, InnerConfig, OuterConfig, RunConfig
from .learner import Learner
from .progress import bar as progress_bar
from .tasks.task import check_family, sample_task

log = logging.getLogger("metalearn")

SECTIONS = {"base": BaseConfig, "adapter": AdapterConfig, "inner": InnerConfig, "outer": OuterConfig}
ALIASES = {"meta_lr": ("outer", "lr"), "inner_lr": ("inner", "lr"), "inner_steps": ("inner", "steps"),
           "model_name": ("base", "name_or_path"), "seed": ("outer", "seed"), "method": ("outer", "method")}


def make_config(config: Union[RunConfig, dict, None] = None, **overrides: Any) -> RunConfig:
    """A RunConfig from a config object or dict plus flat keyword overrides.

    A keyword is ``<section>_<field>`` (``inner_lr``, ``outer_clip_norm``), an alias (``meta_lr``,
    ``inner_steps``, ``method``, ``seed``) or a field name that only one section has (``lora_r``).
    """
    if config is None:
        data: dict = {}
    elif isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = json.loads(json.dumps(config))
    else:
        raise TypeError(f"config must be a RunConfig, a dict or None, not {type(config).__name__}")
    owners: dict[str, list[str]] = {}
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            owners.setdefault(f.name, []).append(section)
    for key, value in overrides.items():
        if key in ALIASES:
            section, name = ALIASES[key]
        elif key.split("_", 1)[0] in SECTIONS and key.split("_", 1)[-1] in {f.name for f in dataclasses.fields(SECTIONS[key.split("_", 1)[0]])}:
            section, name = key.split("_", 1)
        elif len(owners.get(key, [])) == 1:
            section, name = owners[key][0], key
        elif key in owners:
            raise ValueError(f"keyword {key!r} is ambiguous: say which section, e.g. "
                             + ", ".join(f"{s}_{key}" for s in owners[key]))
        else:
            raise ValueError(f"unknown setting {key!r}; known: {sorted(set(owners) | set(ALIASES))}")
        data.setdefault(section, {})[name] = value
    return RunConfig.from_dict(data)


def fit(family: Any, model: Optional[nn.Module] = None, *, config: Union[RunConfig, dict, None] = None,
        tokenizer=None, output_dir: Optional[str] = None, resume: Optional[str] = None, progress: bool = True,
        **overrides: Any) -> Learner:
    """Meta-learn an initialization of the adapters on ``family``'s train split.

    Args:
        family: any object with ``kind`` and ``sample(split, rng) -> Task`` (see ``metalearn.tasks``).
        model: an in-memory base (transformers model or plain ``nn.Module``); else ``base_name_or_path``.
        config: a ``RunConfig`` or dict; keyword ``overrides`` (e.g. ``inner_steps=3, meta_lr=1e-3,
            method="fomaml", lora_r=8, quantization="nf4"``) change single fields.
        output_dir: where to write ``log.jsonl``, ``training_curve.png``, checkpoints and the final learner.
        resume: a checkpoint file (or the run folder holding ``checkpoint.safetensors``) to continue from; the
            run goes on exactly as if it had not stopped (same config and seed required).
        **overrides: single config fields by name, e.g. ``report_to=["tensorboard"]`` (or ``"wandb"``,
            ``"mlflow"``): log every meta-step's losses, gradient norm, learning rate and validation loss there
            (``metalearn.tracking``).

    Example:
        >>> learner = metalearn.fit(metalearn.tasks.load("sinusoid"), model=mlp, meta_steps=1000)
        >>> adapted = learner.adapt(task.support, steps=5)
    """
    config = make_config(config, **overrides)
    resumed = _check_inputs(family, model, config, output_dir, resume)
    with runlock.hold(output_dir if distributed.rank() == 0 else None):  # one live run per output folder
        return _fit(family, model, config, tokenizer, output_dir, resume, resumed, progress)


def _fit(family, model: Optional[nn.Module], config: RunConfig, tokenizer, output_dir: Optional[str],
         resume: Optional[str], resumed: Optional[dict], progress: bool) -> Learner:
    torch.manual_seed(config.outer.seed)
    rng = np.random.default_rng(config.outer.seed)
    probe_task = sample_task(family, "train", np.random.default_rng(config.outer.seed + 10_000))
    learner = build_learner(config, model, tokenizer)
    learner.family = describe_family(family)
    probe = learner.episode(probe_task)  # raises on a head/kind mismatch before training
    learner.check(probe)  # ANIL names, output vs target shapes
    if needs_second_order(config):
        check_double_backward(learner, probe)
    meta = learner.meta_parameters()
    optimizer, scheduler = meta_optimizer.make_optimizer(meta, config.outer)
    start = 0
    if resumed is not None:
        checkpoint.restore(resumed, meta=meta, optimizer=optimizer, scheduler=scheduler, rng=rng)
        start, learner.history = resumed["step"], list(resumed["history"])
        log.info("resumed from %s at meta-step %d", resume, start)
    main_process = distributed.rank() == 0
    writer = _LogWriter(output_dir if main_process else None, learner.history)
    ckpt_path = os.path.join(output_dir, checkpoint.FILE) if output_dir else None

    def save_checkpoint(step: int) -> None:
        if ckpt_path and main_process:
            checkpoint.save(ckpt_path, step=step, meta=meta, optimizer=optimizer, scheduler=scheduler, rng=rng,
                            history=learner.history, config=_resumable(config))

    tracker = tracking.start(config.outer.report_to if main_process else [], output_dir, config, start)
    bar = progress_bar(range(start, config.outer.meta_steps), desc=f"meta-train ({config.outer.method})",
                       initial=start, total=config.outer.meta_steps, disable=not progress or not main_process)
    try:
        for step in bar:
            record = meta_step(learner, family, rng, optimizer, scheduler, step, ckpt_path)
            if config.outer.eval_every and (step + 1) % config.outer.eval_every == 0:
                record["val_query_loss"] = validate(learner, family, config.outer.eval_tasks, config.outer.seed + 1)
            learner.history.append(record)
            writer.write(record)
            tracker.log(record)
            bar.set_postfix(query=f"{record['query_loss']:.4f}", refresh=False)  # drawn at tqdm's own pace
            if config.outer.checkpoint_every and (step + 1) % config.outer.checkpoint_every == 0:
                save_checkpoint(step + 1)
        _check_not_all_skipped(learner.history)
        if output_dir is not None and main_process:
            if config.outer.checkpoint_every:
                save_checkpoint(config.outer.meta_steps)
            learner.save(os.path.join(output_dir, "learner"))
            writer.plot()
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()
    return learner


def _resumable(config: RunConfig) -> dict:
    """The settings a checkpoint must agree on to resume (all but the run length and the trackers)."""
    data = config.to_dict()
    data["outer"] = {k: v for k, v in data["outer"].items() if k not in ("meta_steps", "report_to")}
    return json.loads(json.dumps(data, default=str))


def meta_step(learner: Learner, family, rng: np.random.Generator, optimizer, scheduler, step: int,
              ckpt_path: Optional[str] = None) -> dict:
    """One outer update: sample the meta-batch, take its meta-gradient, guard it, step; return the log record."""
    config = learner.config
    meta = learner.meta_parameters()
    tasks = [sample_task(family, "train", rng) for _ in range(config.outer.meta_batch)]  # same on every rank
    episodes = [learner.episode(task) for task in distributed.shard(tasks)]
    summed, results = algorithms.meta_gradient(learner, episodes, config.outer.method, config.inner.backend)
    summed = distributed.all_reduce_sum(summed)
    problem = nonfinite.first_nonfinite(episodes, results, summed)
    record: dict = {"step": step + 1}
    if problem is not None:
        message = f"meta-step {step + 1}: {problem}"
        if config.outer.on_nonfinite == "stop":
            raise FloatingPointError(f"{message}. The last good checkpoint is kept"
                                     + (f" at {ckpt_path}" if ckpt_path else "") + "; lower the learning rates, "
                                     "set inner clip_norm, or use on_nonfinite='skip'")
        log.warning("%s; meta-step skipped", message)
        record["skipped"] = problem
    else:
        mean_grads = {n: g / len(tasks) for n, g in summed.items()}
        record["grad_norm"] = meta_optimizer.apply(meta, mean_grads, optimizer, scheduler, config.outer.clip_norm)
        record["meta_lr"] = scheduler.get_last_lr()[0]
    record["query_loss"] = float(np.mean([t.query_loss for t in results]))
    first = [t.support_losses[0] for t in results if t.support_losses]
    if first:
        record["support_loss_first"] = float(np.mean(first))
    return record


def _check_not_all_skipped(history: list[dict]) -> None:
    """``on_nonfinite='skip'`` must not quietly hand back the untrained init."""
    skipped = [r for r in history if "skipped" in r]
    if history and len(skipped) == len(history):
        raise FloatingPointError(f"every one of the {len(history)} meta-steps was skipped for non-finite values "
                                 f"(first: meta-step {skipped[0]['step']}: {skipped[0]['skipped']}), so the init is "
                                 "untrained and no learner is saved; lower the learning rates, set inner clip_norm, "
                                 "or check the family's data for NaN or inf")
    if skipped:
        log.warning("%d of %d meta-steps were skipped for non-finite values", len(skipped), len(history))


def _check_inputs(family, model: Optional[nn.Module], config: RunConfig, output_dir: Optional[str],
                  resume: Optional[str]) -> Optional[dict]:
    """Every check that needs no model: raise before anything is loaded or written; return the resumed state."""
    check_family(family)
    if family.kind == "classification" and config.adapter.head is None:
        config.adapter.head = "prototype"
        log.info("classification family: using a prototype-initialized head (ProtoMAML), which works for any N")
    if config.outer.method == "protonet" and family.kind != "classification":
        raise ValueError(f"method='protonet' needs a classification family, not a {family.kind!r} one; use "
                         "method='multitask' for joint training on other kinds")
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={output_dir!r} is a file; give a folder path")
    tracking.check(config.outer.report_to, output_dir)
    if config.outer.checkpoint_every and output_dir is None:
        raise ValueError("checkpoint_every > 0 needs output_dir: checkpoints are written to output_dir/checkpoint.safetensors")
    if config.inner.backend == "higher":
        if model is None:
            raise ValueError("backend='higher' needs model=<a plain nn.Module>; transformers models loaded by name "
                             "cannot be patched by higher. Use backend='functional'")
        from .algorithms.higher_maml import check_higher_model

        check_higher_model(model)
        if family.kind != "regression":
            raise ValueError(f"backend='higher' supports regression families (MSE) only, not {family.kind!r}")
    resumed = checkpoint.load(resume) if resume is not None else None
    if resumed is not None and resumed["config"] != _resumable(config):
        raise ValueError(f"cannot resume from {resume!r}: it was written with different settings; resume with the "
                         "same config (only meta_steps may change)")
    return resumed


def validate(learner: Learner, family, n_tasks: int, seed: int) -> float:
    """Mean query loss after adaptation on ``n_tasks`` val tasks (same tasks every call)."""
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(n_tasks):
        episode = learner.episode(sample_task(family, "val", rng))
        with torch.enable_grad():
            fast, _ = learner.inner_adapt(episode, order="first")
        with torch.no_grad():
            losses.append(float(learner.loss(fast, episode.query, episode.kind)))
    return float(np.mean(losses))


def check_double_backward(learner: Learner, episode) -> None:
    """Fail fast if the model's kernels have no double backward (needed by second-order MAML)."""
    try:
        fast, _ = learner.inner_adapt(episode, steps=1, order="second")
        loss = learner.loss(fast, episode.query, episode.kind)
        torch.autograd.grad(loss, list(learner.meta_parameters().values()), allow_unused=True)
    except RuntimeError as err:
        if "derivative" in str(err) or "double backward" in str(err) or "not implemented" in str(err):
            raise ValueError(f"second-order meta-gradients are impossible on this model: {str(err).splitlines()[0]}. "
                             "Use attn_implementation='eager' (or SDPA's MATH backend), or method='fomaml' / "
                             "inner order='first'") from None
        raise


class _LogWriter:
    """Appends one JSON line per meta-step and draws the training curve at the end."""

    def __init__(self, output_dir: Optional[str], history: list[dict]):
        self.dir = output_dir
        self.records: list[dict] = list(history)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            self.path = os.path.join(output_dir, "log.jsonl")
            with open(self.path, "w") as f:  # a resumed run rewrites the log up to its checkpoint
                f.writelines(json.dumps(r) + "\n" for r in history)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.dir:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        from .plots import training_curve

        training_curve(self.records, os.path.join(self.dir, "training_curve.png"))
