"""Assemble a Learner from a RunConfig (load base → attach adapters → TaskModel), and reload saved ones."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn

from . import adapters as adapters_mod
from .base import load_base, load_tokenizer
from .config import RunConfig
from .learner import CONFIG_FILE, STATE_FILE, Learner
from .model import TaskModel

SECOND_ORDER_METHODS = ("maml", "metasgd", "anil")


def needs_second_order(config: RunConfig) -> bool:
    return config.outer.method in SECOND_ORDER_METHODS and config.inner.order != "first"


def build_learner(config: RunConfig, model: Optional[nn.Module] = None, tokenizer=None) -> Learner:
    """Load the frozen base once, attach the adapters the config names, and wrap it all in a Learner."""
    base, model_type = load_base(config.base, model, second_order=needs_second_order(config))
    if tokenizer is None and model_type != "module":
        tokenizer = load_tokenizer(config.base.name_or_path)
    adapted = adapters_mod.attach(base, model_type, config.adapter, tokenizer)
    task_model = TaskModel(adapted.module, model_type, tokenizer, adapted.n_virtual_tokens, config.base.max_length,
                           config.adapter.head_metric, config.adapter.head_temperature)
    return Learner(task_model, adapted, config)


def load(path: str, model: Optional[nn.Module] = None, tokenizer=None) -> Learner:
    """Restore a Learner written by ``Learner.save``.

    The adapter tensors are read back through peft's own loader from the adapter folder(s), the
    step sizes and head from the sidecar. Pass ``model`` when the base is not loadable by name
    (e.g. a model built from a config; it must hold the same weights as at save time).
    """
    from safetensors.torch import load_file

    meta_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no saved learner at {path!r}: the folder does not exist")
    if not os.path.exists(meta_path):
        raise ValueError(f"{path!r} is not a saved metalearn learner: {CONFIG_FILE} is missing "
                         "(save with Learner.save, or load a bare peft adapter with peft.PeftModel.from_pretrained)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        config = RunConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_path} is corrupted ({err}); re-save the learner") from None
    learner = build_learner(config, model, tokenizer)
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.exists(state_path):
        raise ValueError(f"{path!r} is a partial save: {STATE_FILE} is missing; re-save the learner")
    try:
        state = load_file(state_path)
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ValueError(f"{state_path} is corrupted ({err}); re-save the learner") from None
    if learner.adapted.lora is not None or learner.adapted.prompt is not None:
        _load_peft_values(learner, path)
    with torch.no_grad():
        for name, value in state.items():
            if name.startswith("lr:"):
                learner.step_sizes[name[3:]].copy_(value)
            elif name in learner.init:
                learner.init[name].copy_(value)
            else:
                learner.init[name] = value.clone().requires_grad_(True)
    return learner


def _load_peft_values(learner: Learner, path: str) -> None:
    """Fill the learner's init from the peft adapter folder(s) via peft's loader."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    adapted = learner.adapted
    parts = []
    if adapted.lora is not None:
        parts.append((adapted.lora, path))
    if adapted.prompt is not None:
        parts.append((adapted.prompt, os.path.join(path, adapters_mod.PROMPT_SUBFOLDER) if adapted.lora else path))
    for peft_model, folder in parts:
        if not os.path.exists(os.path.join(folder, "adapter_config.json")):
            raise ValueError(f"{folder!r} lacks adapter_config.json: the saved learner is partial; re-save it")
        try:
            weights = load_peft_weights(folder, device="cpu")
        except Exception as err:
            raise ValueError(f"adapter weights in {folder!r} cannot be read ({err}); re-save the learner") from None
        result = set_peft_model_state_dict(peft_model, weights)
        missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k and peft_model is adapted.lora]
        if missing:
            raise ValueError(f"adapter weights in {folder!r} do not match the model: missing {missing[:3]}; "
                             "was it saved from a different base or LoRA config?")
    current = adapters_mod.adaptable_params(adapted)
    with torch.no_grad():
        for name, value in current.items():
            learner.init[name].copy_(value)
