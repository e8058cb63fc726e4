"""Settings for a meta-learning run, as dataclasses that validate themselves on construction.

Every invalid value raises ``ValueError`` naming the field, the value and the fix, before any model
is loaded or any file is written. ``RunConfig.to_dict``/``from_dict`` round-trip through JSON.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

METHODS = ("maml", "fomaml", "reptile", "metasgd", "anil", "multitask", "protonet")
INNER_OPTIMIZERS = ("sgd", "adam")
QUANTIZATIONS = (None, "nf4", "int8")
MODEL_TYPES = ("auto", "causal", "encoder", "seq2seq")
HEADS = (None, "prototype", "learned")
DTYPES = ("float32", "float64", "bfloat16", "float16")
REPORT_TO = ("tensorboard", "wandb", "mlflow")


def _check(ok: bool, field_name: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}={value!r} is invalid: {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (bools, strings, NaN and inf are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _names(value: Any, field_name: str, fix: str) -> Optional[list]:
    """None, or a non-empty list of non-empty strings (a single string is a list of one)."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    _check(bool(names) and all(isinstance(n, str) and n for n in names), field_name, value, fix)
    return names


@dataclass
class BaseConfig:
    """Which frozen base model to load and how (QLoRA: ``quantization="nf4"``, double quant on)."""

    name_or_path: Optional[str] = None
    model_type: str = "auto"
    quantization: Optional[str] = None
    double_quant: bool = True
    compute_dtype: str = "float32"
    attn_implementation: Optional[str] = None  # None: eager when second order is on, else the model's default
    max_length: int = 128

    def __post_init__(self) -> None:
        _check(self.model_type in MODEL_TYPES, "model_type", self.model_type, f"use one of {MODEL_TYPES}")
        _check(self.quantization in QUANTIZATIONS, "quantization", self.quantization,
               "use None, 'nf4' (4-bit NormalFloat, QLoRA) or 'int8'")
        _check(self.compute_dtype in DTYPES, "compute_dtype", self.compute_dtype, f"use one of {DTYPES}")
        _check(self.name_or_path is None or isinstance(self.name_or_path, str), "name_or_path", self.name_or_path,
               "use a Hugging Face model id or a folder path (a string)")
        _check(_is_int(self.max_length) and self.max_length > 0, "max_length", self.max_length, "use a positive token count")


@dataclass
class AdapterConfig:
    """Which tensors are meta-learned: LoRA (peft), a soft prompt or a prefix, and/or a task head.

    peft holds one prompt-learning method per model, so a soft prompt (``prompt_tokens``) and a prefix
    (``prefix_tokens``) exclude each other; either combines with LoRA.
    """

    lora_r: int = 8
    lora_alpha: Optional[float] = None  # None: 2 * r
    lora_dropout: float = 0.0
    target_modules: Optional[Sequence[str]] = None  # None: peft's defaults for the architecture
    init_lora_weights: Any = True  # peft's options: True (B=0), "gaussian", "pissa", "olora", ...
    prompt_tokens: int = 0  # soft prompt length; 0 turns prompt tuning off
    prompt_init_text: Optional[str] = None  # initialize the soft prompt from this text's embeddings
    prefix_tokens: int = 0  # prefix tuning: key/value prefix length at every layer; 0 turns it off
    prefix_projection: bool = False  # reparameterize the prefix through peft's two-layer MLP (Li & Liang 2021)
    prefix_hidden: Optional[int] = None  # that MLP's hidden size; None: the model's hidden size
    prefix_init: Optional[str] = None  # peft's init_weights: None (random) or "zero" (zero keys and values)
    head: Optional[str] = None  # classification: "prototype" (ProtoMAML, any N) or "learned" (fixed N)
    n_way: Optional[int] = None  # needed by head="learned"
    head_metric: str = "euclidean"  # prototype/linear head on "euclidean" features or "cosine" similarity
    head_temperature: float = 0.05  # cosine head: logits = cos(f, w) / temperature
    lora: bool = True

    def __post_init__(self) -> None:
        if self.lora:
            _check(_is_int(self.lora_r) and self.lora_r > 0, "lora_r", self.lora_r, "use a positive integer rank")
        _check(_is_number(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0, "lora_dropout", self.lora_dropout, "use a value in [0, 1)")
        _check(_is_int(self.prompt_tokens) and self.prompt_tokens >= 0, "prompt_tokens",
               self.prompt_tokens, "use 0 (off) or a positive number of virtual tokens")
        _check(_is_int(self.prefix_tokens) and self.prefix_tokens >= 0, "prefix_tokens",
               self.prefix_tokens, "use 0 (off) or a positive number of prefix positions")
        _check(isinstance(self.prefix_projection, bool), "prefix_projection", self.prefix_projection,
               "use True (an MLP produces the prefix) or False (the prefix is learned directly)")
        _check(not self.prefix_projection or self.prefix_tokens > 0, "prefix_projection", self.prefix_projection,
               "the projection reparameterizes a prefix: set prefix_tokens > 0, or prefix_projection=False")
        _check(self.prefix_hidden is None or (_is_int(self.prefix_hidden) and self.prefix_hidden > 0
                                              and self.prefix_projection), "prefix_hidden", self.prefix_hidden,
               "use a positive MLP width together with prefix_projection=True, or None")
        _check(self.prefix_init in (None, "zero"), "prefix_init", self.prefix_init,
               "use None (peft's random init) or 'zero' (the prefix starts at zero keys and values)")
        if self.prompt_tokens and self.prefix_tokens:
            raise ValueError(f"prompt_tokens={self.prompt_tokens} with prefix_tokens={self.prefix_tokens} is invalid: "
                             "peft holds one prompt-learning method per model, so a soft prompt and a prefix cannot be "
                             "combined; use one of them, each alone or with LoRA (lora=True), e.g. prefix_tokens="
                             f"{self.prefix_tokens} with LoRA, or prompt_tokens={self.prompt_tokens} with LoRA")
        _check(self.head in HEADS, "head", self.head, f"use one of {HEADS}")
        _check(self.head_metric in ("euclidean", "cosine"), "head_metric", self.head_metric,
               "use 'euclidean' or 'cosine'")
        _check(_is_positive(self.head_temperature), "head_temperature", self.head_temperature,
               "use a positive temperature, e.g. 0.05")
        if self.head == "learned":
            _check(isinstance(self.n_way, int) and self.n_way >= 2, "n_way", self.n_way,
                   "head='learned' needs n_way >= 2 (or use head='prototype', which works for any N)")
        _check(self.lora_alpha is None or _is_positive(self.lora_alpha), "lora_alpha", self.lora_alpha,
               "use a positive number, or None for 2 * lora_r")
        self.target_modules = _names(self.target_modules, "target_modules",
                                     "name at least one module (non-empty strings), or pass None for peft's defaults")


@dataclass
class InnerConfig:
    """The unrolled, differentiable inner loop (task adaptation)."""

    steps: int = 3
    lr: float = 0.01
    optimizer: str = "sgd"
    lora_plus_ratio: float = 1.0  # LoRA+: B's learning rate = lr * ratio
    learn_step_sizes: bool = False  # Meta-SGD: one learned step size per tensor
    per_step: bool = False  # Meta-SGD: one per tensor and per step
    order: str = "second"  # "second", "first" (detach inner gradients) or "truncated"
    truncate: Optional[int] = None  # with order="truncated": backpropagate through the last T steps
    checkpoint: bool = False  # non-reentrant activation checkpointing of each inner step
    clip_norm: Optional[float] = None  # clip each inner gradient's global norm
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    trainable: Optional[Sequence[str]] = None  # ANIL: substrings of the names adapted in the inner loop
    backend: str = "functional"  # "functional" (torch.func) or "higher" (plain nn.Modules only)
    task_batching: str = "auto"  # run a meta-batch's inner loops as one batched computation: "auto", "on", "off"
    support_temperature: Optional[float] = None  # cosine head: the temperature of the inner loop's support loss
    task_chunk: Optional[int] = None  # batch at most this many tasks at once (memory ~ chunk, not meta-batch); None: all

    def __post_init__(self) -> None:
        _check(_is_int(self.steps) and self.steps >= 0, "steps", self.steps, "use a non-negative integer")
        _check(_is_positive(self.lr), "lr", self.lr, "use a positive, finite learning rate")
        _check(self.optimizer in INNER_OPTIMIZERS, "optimizer", self.optimizer, f"use one of {INNER_OPTIMIZERS}")
        _check(_is_positive(self.lora_plus_ratio), "lora_plus_ratio", self.lora_plus_ratio, "use a positive multiplier (1 = off)")
        _check(self.order in ("second", "first", "truncated"), "order", self.order,
               "use 'second', 'first' or 'truncated'")
        if self.order == "truncated":
            _check(_is_int(self.truncate) and 1 <= self.truncate <= max(self.steps, 1), "truncate",
                   self.truncate, f"order='truncated' needs 1 <= truncate <= steps ({self.steps})")
        if self.clip_norm is not None:
            _check(_is_positive(self.clip_norm), "clip_norm", self.clip_norm, "use a positive norm or None")
        self.adam_betas = tuple(self.adam_betas)
        _check(len(self.adam_betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.adam_betas),
               "adam_betas", self.adam_betas, "use two numbers in [0, 1), e.g. (0.9, 0.999)")
        _check(_is_positive(self.adam_eps), "adam_eps", self.adam_eps, "use a small positive number, e.g. 1e-8")
        self.trainable = _names(self.trainable, "trainable",
                                "name substrings of the tensors to adapt, e.g. ['head'], or None for all")
        _check(self.backend in ("functional", "higher"), "backend", self.backend, "use 'functional' or 'higher'")
        if self.support_temperature is not None:
            _check(_is_positive(self.support_temperature), "support_temperature", self.support_temperature,
                   "use a positive temperature (e.g. 0.2), or None for the head's own")
        _check(self.task_batching in ("auto", "on", "off"), "task_batching", self.task_batching,
               "use 'auto' (batch where possible), 'on' or 'off' (a Python loop over tasks)")
        _check(self.task_chunk is None or (_is_int(self.task_chunk) and self.task_chunk >= 1), "task_chunk",
               self.task_chunk, "use a positive number of tasks per batched chunk, or None for the whole meta-batch")
        if self.backend == "higher":
            _check(not self.learn_step_sizes and self.lora_plus_ratio == 1.0 and self.trainable is None
                   and self.order != "truncated" and not self.checkpoint, "backend", self.backend,
                   "the higher backend runs plain MAML / first-order MAML only; use backend='functional' for "
                   "Meta-SGD, LoRA+, ANIL, truncation or checkpointing")


@dataclass
class OuterConfig:
    """The outer (meta) loop: algorithm, meta-batch, meta-optimizer and schedule."""

    method: str = "maml"
    meta_batch: int = 4
    meta_steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" or "sgd" (Reptile's classic outer step)
    weight_decay: float = 0.0
    clip_norm: Optional[float] = 1.0
    schedule: str = "constant"  # "constant", "cosine" or "linear"
    warmup_steps: int = 0
    seed: int = 0
    eval_every: int = 0  # validate on the val split every N meta-steps (0: never)
    eval_tasks: int = 8
    checkpoint_every: int = 0  # write output_dir/checkpoint.safetensors every N meta-steps and at the end (0: off)
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop" the run or "skip" the meta-step
    report_to: Optional[Sequence[str]] = None  # experiment trackers: any of REPORT_TO (see metalearn.tracking)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, f"use one of {METHODS}")
        _check(_is_int(self.meta_batch) and self.meta_batch >= 1, "meta_batch", self.meta_batch,
               "use a positive number of tasks per meta-step")
        _check(_is_int(self.meta_steps) and self.meta_steps >= 0, "meta_steps", self.meta_steps,
               "use a non-negative integer")
        _check(_is_positive(self.lr), "lr", self.lr, "use a positive, finite meta learning rate")
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
               "use a non-negative number")
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", self.warmup_steps,
               "use a non-negative integer")
        _check(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "use 'adamw' or 'sgd'")
        _check(self.schedule in ("constant", "cosine", "linear"), "schedule", self.schedule,
               "use 'constant', 'cosine' or 'linear'")
        if self.clip_norm is not None:
            _check(_is_positive(self.clip_norm), "clip_norm", self.clip_norm, "use a positive norm or None")
        _check(_is_int(self.checkpoint_every) and self.checkpoint_every >= 0, "checkpoint_every",
               self.checkpoint_every, "use 0 (off) or a positive number of meta-steps")
        _check(_is_int(self.eval_every) and self.eval_every >= 0, "eval_every", self.eval_every,
               "use 0 (off) or a positive number of meta-steps")
        _check(_is_int(self.eval_tasks) and self.eval_tasks >= 1, "eval_tasks", self.eval_tasks,
               "use a positive number of validation tasks")
        _check(self.on_nonfinite in ("stop", "skip"), "on_nonfinite", self.on_nonfinite, "use 'stop' or 'skip'")
        _check(_is_int(self.seed), "seed", self.seed, "use an integer seed")
        empty = self.report_to is None or self.report_to == "none" or self.report_to in ([], ())
        report_to = [] if empty else _names(
            self.report_to, "report_to", f"name experiment trackers among {REPORT_TO}, or None")
        unknown = [name for name in report_to if name not in REPORT_TO]
        _check(not unknown and len(set(report_to)) == len(report_to), "report_to", self.report_to,
               f"name each experiment tracker once, among {REPORT_TO} (or None for none)")
        self.report_to = report_to


@dataclass
class RunConfig:
    """Everything ``metalearn.fit`` needs besides the family and the model."""

    base: BaseConfig = field(default_factory=BaseConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)

    def __post_init__(self) -> None:
        method = self.outer.method
        needs_inner = method not in ("multitask", "protonet")
        if needs_inner and self.inner.steps == 0:
            raise ValueError(f"inner.steps=0 is invalid: method {method!r} adapts in an inner loop; "
                             "use inner.steps >= 1 (or method='multitask' / 'protonet', which have no inner loop)")
        if method == "protonet" and self.adapter.head is None:
            self.adapter.head = "prototype"
        if method == "protonet" and self.adapter.head != "prototype":
            raise ValueError(f"adapter.head={self.adapter.head!r} is invalid for method='protonet': a prototypical "
                             "network classifies by support prototypes; set head='prototype'")
        if method == "metasgd":
            self.inner.learn_step_sizes = True
        if self.inner.backend == "higher" and method not in ("maml", "fomaml"):
            raise ValueError(f"inner.backend='higher' runs method 'maml' or 'fomaml', not {method!r}; use "
                             "backend='functional'")
        if method == "fomaml":
            self.inner.order = "first"
        if self.inner.support_temperature is not None and self.adapter.head_metric != "cosine":
            raise ValueError(f"inner.support_temperature={self.inner.support_temperature!r} is invalid with "
                             f"adapter.head_metric={self.adapter.head_metric!r}: it is the temperature of a cosine "
                             "head; set head_metric='cosine' or support_temperature=None")
        if method == "anil" and not self.inner.trainable:
            raise ValueError("inner.trainable=None is invalid for method='anil': name the tensors adapted in the "
                             "inner loop, e.g. trainable=['head'] or ['prompt_encoder']")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {"base": BaseConfig, "adapter": AdapterConfig, "inner": InnerConfig, "outer": OuterConfig}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; use {sorted(known)}")
        parts = {}
        for name, klass in known.items():
            values = dict(data.get(name) or {})
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - names
            if bad:
                raise ValueError(f"unknown {name} setting(s) {sorted(bad)}; known: {sorted(names)}")
            parts[name] = klass(**values)
        return cls(**parts)


@dataclass
class Recipe:
    """How ``Learner.adapt`` adapts by default: chosen on validation tasks by ``metalearn.eval.tune_recipe``.

    Saved with the learner (``metalearn.json``), so ``metalearn.load(dir).adapt(support)`` runs it.

    Attributes:
        steps: inner steps at test time.
        scale: multiplier of the meta-trained inner step sizes.
        guard: classification at K >= 2: decide per task, from its support set's own folds, whether
            adapting beats the frozen foundation (``metalearn.guarded.decide``).
        folds: support folds the guard holds out (None: K).
        guard_steps: inner steps each guard fold adapts (None: ``steps``). 0 scores the meta-learned init's
            prototypes on the folds without adapting: one forward of the support set for all folds.
        margin: held-out accuracy the adapted model must gain over the foundation to be kept.
        reuse_fold: when the guard decides to adapt, keep its first fold's adaptation (the K-1 shots per class
            it adapted on, ``guard_steps`` steps) with the prototype head recomputed on all K shots, instead of
            adapting again on the whole support set. A guarded task then costs ``folds`` adaptations on
            (K-1)/K of its support instead of one more on all of it: at one fold, less than an unguarded one.
        chosen_on: how the steps and scale were chosen (validation scores, episodes, grids), for the record.
    """

    steps: int
    scale: float = 1.0
    guard: bool = True
    folds: Optional[int] = None
    margin: float = 0.0
    guard_steps: Optional[int] = None
    reuse_fold: bool = False
    chosen_on: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(_is_int(self.steps) and self.steps >= 0, "recipe.steps", self.steps, "use a number of steps >= 0")
        _check(_is_positive(self.scale), "recipe.scale", self.scale, "use a positive step-size multiplier")
        _check(isinstance(self.guard, bool), "recipe.guard", self.guard, "use True or False")
        _check(self.folds is None or _is_int(self.folds) and self.folds >= 1, "recipe.folds", self.folds,
               "use a positive number of folds, or None for K")
        _check(self.guard_steps is None or _is_int(self.guard_steps) and self.guard_steps >= 0, "recipe.guard_steps",
               self.guard_steps, "use a number of steps >= 0 for the guard's folds, or None for the recipe's steps")
        _check(_is_number(self.margin) and self.margin >= 0, "recipe.margin", self.margin, "use a number >= 0")
        _check(isinstance(self.reuse_fold, bool), "recipe.reuse_fold", self.reuse_fold, "use True or False")
        _check(not (self.reuse_fold and self.guard_steps == 0), "recipe.reuse_fold", self.reuse_fold,
               "a fold that adapts 0 steps (guard_steps=0) has no adaptation to reuse: set guard_steps > 0 "
               "(or None, the recipe's steps), or reuse_fold=False")
        _check(isinstance(self.chosen_on, dict), "recipe.chosen_on", self.chosen_on, "use a dict")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        if not isinstance(data, dict):
            raise ValueError(f"recipe={data!r} is invalid: use a mapping of Recipe fields")
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(data) - names
        if bad:
            raise ValueError(f"unknown recipe setting(s) {sorted(bad)}; known: {sorted(names)}")
        return cls(**data)
