"""What evaluation asks of a Learner beyond its own methods, so that ``eval/`` never touches adapters or
quantization (the Learner itself gives ``scaled``, ``frozen`` and ``adapt_params``).

* :func:`random_init`: a learner over the same base and adapters with a fresh peft init (a baseline);
* :func:`evaluation_mode`: modules in eval mode, 4-bit weights dequantized once, scratch values put back.

Nothing here copies the frozen base: every view shares the learner's modules.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from .adapters import adaptable_params, init_prompt_from_text, write_params
from .config import RunConfig
from .learner import Learner
from .model import eval_mode
from .quant import transformable_4bit

__all__ = ["evaluation_mode", "random_init"]


@contextlib.contextmanager
def evaluation_mode(learners: Sequence[Learner]) -> Iterator[None]:
    """The learners' modules in eval mode (no dropout) and their adapters' scratch values put back afterwards.

    4-bit layers compute through ``quant.transformable_4bit``: the same numbers, but each frozen weight is
    dequantized once for the whole evaluation instead of at every forward (on CPU that is most of the time).
    """
    modules = {id(lr.adapted.module): lr.adapted.module for lr in learners}.values()
    adapted = {id(lr.adapted): lr.adapted for lr in learners}.values()
    saved = [(a, {n: t.detach().clone() for n, t in adaptable_params(a).items()}) for a in adapted]
    try:
        with contextlib.ExitStack() as stack:
            for root in modules:
                stack.enter_context(eval_mode(root))
                stack.enter_context(transformable_4bit(root))
            yield
    finally:
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
