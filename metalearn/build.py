"""Assemble a Learner from a RunConfig (load base → attach adapters → TaskModel), and reload saved ones."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from . import adapters as adapters_mod
from . import saved
from .config import Recipe, RunConfig
from .foundation import load_base, load_tokenizer
from .learner import Learner
from .model import TaskModel
from .progress import library_bars_only_when_live
from .saved import CONFIG_FILE, STATE_FILE

SECOND_ORDER_METHODS = ("maml", "metasgd", "anil")


def needs_second_order(config: RunConfig) -> bool:
    return config.outer.method in SECOND_ORDER_METHODS and config.inner.order != "first"


def build_learner(config: RunConfig, model: Optional[nn.Module] = None, tokenizer=None) -> Learner:
    """Load the frozen base once, attach the adapters the config names, and wrap it all in a Learner."""
    if model is not None:
        adapters_mod.check_unadapted(model)
    with library_bars_only_when_live():
        base, model_type = load_base(config.base, model, second_order=needs_second_order(config))
        if tokenizer is None and model_type != "module":
            tokenizer = load_tokenizer(config.base.name_or_path)
    base_name = config.base.name_or_path or getattr(model, "name_or_path", None) or None
    adapted = adapters_mod.attach(base, model_type, config.adapter, tokenizer, base_name)
    task_model = TaskModel(adapted.module, model_type, tokenizer, adapted.n_virtual_tokens, config.base.max_length,
                           config.adapter.head_metric, config.adapter.head_temperature)
    return Learner(task_model, adapted, config)


def load(path: str, model: Optional[nn.Module] = None, tokenizer=None) -> Learner:
    """Restore a Learner written by ``Learner.save``.

    The folder is read whole and verified against the checksums in its sidecar first (see
    ``metalearn.saved``); then the base is built, the adapter tensors go in through peft's own
    state-dict loader, the step sizes and head from the sidecar. Pass ``model`` when the base is not
    loadable by name (e.g. a model built from a config; it must hold the same weights as at save time).
    """
    folder = saved.read(path)
    try:
        config = RunConfig.from_dict(folder.meta["config"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)} is corrupted ({err}); re-save the learner") from None
    try:
        recipe = Recipe.from_dict(folder.meta["recipe"]) if folder.meta.get("recipe") is not None else None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: its recipe is corrupted ({err}); re-save the learner "
                         "or choose it again (metalearn.eval.tune_recipe)") from None
    state = folder.tensors(STATE_FILE)
    learner = build_learner(config, model, tokenizer)
    if learner.adapted.peft_parts():
        _load_peft_values(learner, folder)
    expected = {**{"lr:" + n: t for n, t in learner.step_sizes.items()}, **learner.init}
    _check_shapes(folder, STATE_FILE, state, {n: t.shape for n, t in expected.items()})
    with torch.no_grad():
        for name, value in state.items():
            if name.startswith("lr:"):
                learner.step_sizes[name[3:]].copy_(value)
            elif name in learner.init:
                learner.init[name].copy_(value)
            else:
                learner.init[name] = value.clone().requires_grad_(True)
    learner.recipe = recipe
    return learner


def _load_peft_values(learner: Learner, folder: saved.Folder) -> None:
    """Fill the learner's init from the peft adapter folder(s) via peft's state-dict loader.

    A reparameterized prefix is skipped: peft's folder holds the prefix its MLP computed, the MLP's
    own tensors come from the sidecar.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    adapted = learner.adapted
    for peft_model, sub in adapted.peft_parts():
        if peft_model is adapted.prefix and adapted.reparameterized:
            continue
        prefix = sub + "/" if sub else ""
        where = os.path.join(folder.path, prefix)
        if not folder.has(prefix + saved.ADAPTER_CONFIG):
            raise ValueError(f"{where!r} lacks adapter_config.json: the saved learner is partial; re-save it")
        weights = folder.tensors(prefix + saved.ADAPTER_WEIGHTS)
        expected = {k: v.shape for k, v in get_peft_model_state_dict(peft_model).items()}
        _check_shapes(folder, prefix + saved.ADAPTER_WEIGHTS, weights, expected)
        result = set_peft_model_state_dict(peft_model, weights)
        missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k and peft_model is adapted.lora]
        if missing:
            raise ValueError(f"adapter weights in {where!r} do not match the model: missing {missing[:3]}; "
                             "was it saved from a different base or LoRA config?")
    current = adapters_mod.adaptable_params(adapted)
    with torch.no_grad():
        for name, value in current.items():
            learner.init[name].copy_(value)


def _check_shapes(folder: saved.Folder, rel: str, tensors: dict, expected: dict) -> None:
    """Every saved tensor the model also has must have the model's shape (else: which one, and the fix)."""
    for name, value in sorted(tensors.items()):
        if name in expected and tuple(value.shape) != tuple(expected[name]):
            raise ValueError(f"{os.path.join(folder.path, rel)!r}: tensor {name!r} has shape {tuple(value.shape)} but "
                             f"the config in {CONFIG_FILE} gives {tuple(expected[name])}; the folder mixes files from "
                             "different saves or configs (e.g. another lora_r or prompt_tokens). Re-save the learner, "
                             "or load it with the base and settings it was saved with")
