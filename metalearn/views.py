"""Views of a Learner that evaluation asks for, so that ``eval/`` never touches adapters or quantization.

* :func:`scaled`: the same learner with its inner step sizes times a factor (a learning-rate search);
* :func:`frozen_base`: a ``TaskModel`` over the learner's base with every adapter switched off;
* :func:`random_init`: a learner over the same base and adapters with a fresh peft init (a baseline);
* :func:`evaluation_mode`: modules in eval mode, 4-bit weights dequantized once, scratch values put back.

Nothing here copies the frozen base: every view shares the learner's modules.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import torch

from .adapters import adaptable_params, init_prompt_from_text, write_params
from .config import RunConfig
from .learner import Learner
from .model import TaskModel
from .quant import transformable_4bit

__all__ = ["evaluation_mode", "frozen_base", "random_init", "scaled"]


def scaled(learner: Learner, scale: float) -> Learner:
    """A shallow view of ``learner`` with a detached init and step sizes times ``scale`` (the learner is untouched)."""
    view = copy.copy(learner)
    view.init = {n: t.detach().requires_grad_(True) for n, t in learner.init.items()}
    view.step_sizes = {n: t.detach() * scale for n, t in learner.step_sizes.items()}
    return view


@contextlib.contextmanager
def frozen_base(learner: Learner) -> Iterator[TaskModel]:
    """A TaskModel over the learner's base with the soft prompt or prefix and LoRA switched off (nothing copied)."""
    adapted, model = learner.adapted, learner.model
    module = adapted.soft.base_model if adapted.soft is not None else adapted.module
    frozen = TaskModel(module, model.model_type, model.tokenizer, 0, model.max_length,
                       getattr(model, "head_metric", "euclidean"), getattr(model, "head_temperature", 0.05))
    with adapted.lora.disable_adapter() if adapted.lora is not None else contextlib.nullcontext():
        yield frozen


@contextlib.contextmanager
def evaluation_mode(learners: Sequence[Learner]) -> Iterator[None]:
    """The learners' modules in eval mode (no dropout) and their adapters' scratch values put back afterwards.

    4-bit layers compute through ``quant.transformable_4bit``: the same numbers, but each frozen weight is
    dequantized once for the whole evaluation instead of at every forward (on CPU that is most of the time).
    """
    modules = {id(lr.adapted.module): lr.adapted.module for lr in learners}.values()
    adapted = {id(lr.adapted): lr.adapted for lr in learners}.values()
    flags = [(m, m.training) for root in modules for m in root.modules()]
    saved = [(a, {n: t.detach().clone() for n, t in adaptable_params(a).items()}) for a in adapted]
    for root in modules:
        root.eval()
    try:
        with contextlib.ExitStack() as stack:
            for root in modules:
                stack.enter_context(transformable_4bit(root))
            yield
    finally:
        for m, training in flags:
            m.training = training
        for a, values in saved:
            write_params(a, values)


def random_init(learner: Learner, seed: int = 0) -> Learner:
    """A Learner over the same frozen base and adapters, with a fresh peft init and plain SGD step sizes.

    Nothing is copied or re-attached: the adapter modules are re-initialized in place as peft would
    (LoRA ``reset_lora_parameters``, a new soft-prompt or prefix encoder, ``reset_parameters`` of a plain
    module), the values are read out as the new init, and the module's previous values are put back.
    The inner loop is plain first-order fine-tuning of every adaptable tensor at ``config.inner.lr``
    (no learned step sizes, no ANIL subset), so only the learning-rate search tunes it.
    """
    adapted = learner.adapted
    saved = {n: t.detach().clone() for n, t in adaptable_params(adapted).items()}
    data = learner.config.to_dict()
    data["outer"]["method"] = "fomaml"
    data["inner"].update(learn_step_sizes=False, per_step=False, order="first", truncate=None, trainable=None,
                         steps=max(1, data["inner"]["steps"]))
    config = RunConfig.from_dict(data)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _reinitialize(learner)
            fresh = Learner(learner.model, adapted, config)
    finally:
        write_params(adapted, saved)
    fresh.init = {n: t.detach().clone().requires_grad_(True) for n, t in fresh.init.items()}
    return fresh


def _reinitialize(learner: Learner) -> None:
    """Re-draw the adapter tensors in place, the way peft (or torch) first initialized them."""
    adapted, cfg = learner.adapted, learner.config.adapter
    with torch.no_grad():
        if adapted.lora is None and adapted.soft is None:
            for module in adapted.module.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            return
        if adapted.lora is not None:
            init = cfg.init_lora_weights
            if not (init is True or (isinstance(init, str) and init.lower() == "gaussian")):
                raise ValueError(f"baseline 'random_init' re-draws LoRA weights, which works for "
                                 f"init_lora_weights=True or 'gaussian', not {init!r} (that init depends on or "
                                 "changes the base weights); drop 'random_init' or meta-learn from a plain LoRA init")
            from peft.tuners.lora.layer import LoraLayer

            for module in adapted.lora.modules():
                if isinstance(module, LoraLayer):
                    for name in module.lora_A:
                        module.reset_lora_parameters(name, init)
        if adapted.prompt is not None:
            encoder = adapted.prompt.prompt_encoder["default"]
            encoder.embedding.reset_parameters()
            if cfg.prompt_init_text:
                init_prompt_from_text(adapted.prompt, cfg.prompt_init_text, learner.model.tokenizer)
        if adapted.prefix is not None:  # the prefix (and its MLP) drawn by a new peft PrefixEncoder
            encoder = adapted.prefix.prompt_encoder["default"]
            encoder.load_state_dict(type(encoder)(adapted.prefix.peft_config["default"]).state_dict())
