"""Attach the adaptable tensors to a frozen base with peft, read them out as a dict, save and load them.

peft owns the adapter modules and the on-disk format; metalearn owns only the tensors' values.
LoRA and a prompt-learning method (a soft prompt, Lester et al. 2021, or a key/value prefix at every
layer, Li & Liang 2021) combine by wrapping the LoRA-injected model in a prompt-learning PeftModel
(a PeftModel holds one adapter type); they save as two adapter folders: LoRA at the root, the soft
prompt in ``prompt/`` or the prefix in ``prefix/``. Alone, either one is saved at the root.

A prefix reaches the model as ``past_key_values`` that peft computes from its prompt encoder inside
the forward, so ``torch.func.functional_call`` over the encoder's tensors (the prefix itself, or the
embedding and MLP of its reparameterization) differentiates through it like through a soft prompt.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import AdapterConfig
from .quiet import PEFT_WRAP, ignoring
from .saved import PREFIX_SUBFOLDER, PROMPT_SUBFOLDER
from .types import Params

log = logging.getLogger("metalearn")

PEFT_TASK_TYPES = {"causal": "CAUSAL_LM", "encoder": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM"}


@dataclass
class Adapted:
    """The base with adapters attached: the module to call, and the peft models that own the adapters."""

    module: nn.Module  # the outermost module; call this
    lora: Optional[nn.Module]  # peft LoRA model (None without LoRA)
    prompt: Optional[nn.Module]  # peft prompt-tuning model (None without a soft prompt)
    names: tuple[str, ...]  # names (in ``module``) of the adaptable tensors
    prefix: Optional[nn.Module] = None  # peft prefix-tuning model (None without a prefix)

    @property
    def soft(self) -> Optional[nn.Module]:
        """The prompt-learning PeftModel (soft prompt or prefix; peft holds at most one), or None."""
        return self.prompt if self.prompt is not None else self.prefix

    @property
    def n_virtual_tokens(self) -> int:
        """Positions the soft prompt adds to the outputs (a prefix lives in the attention cache: none)."""
        if self.prompt is None:
            return 0
        return self.prompt.peft_config["default"].num_virtual_tokens

    @property
    def reparameterized(self) -> bool:
        """A prefix computed by peft's MLP: peft saves the prefix it computes, not the MLP."""
        return self.prefix is not None and bool(self.prefix.peft_config["default"].prefix_projection)

    def sidecar_names(self) -> tuple[str, ...]:
        """Adaptable tensors peft's adapter format cannot hold (metalearn saves them beside it)."""
        if self.lora is None and self.soft is None:
            return self.names  # a plain module, meta-learned whole
        if self.reparameterized:
            return tuple(n for n in self.names if n.startswith("prompt_encoder."))
        return ()

    def peft_parts(self) -> list[tuple[nn.Module, str]]:
        """Each peft model with the subfolder it saves to: LoRA at the root, a soft prompt or prefix beside it."""
        parts = [(self.lora, "")] if self.lora is not None else []
        if self.soft is not None:
            sub = PROMPT_SUBFOLDER if self.prompt is not None else PREFIX_SUBFOLDER
            parts.append((self.soft, sub if self.lora is not None else ""))
        return parts


LORA_LAYER_TYPES = ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D", "Embedding", "Conv1d", "Conv2d")


def check_target_modules(model: nn.Module, targets) -> None:
    """Raise unless every LoRA target name matches at least one layer type that LoRA supports."""
    modules = list(model.named_modules())
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules if type(m).__name__ in LORA_LAYER_TYPES and n})
    for target in targets:
        matches = [m for n, m in modules if n == target or n.endswith("." + target)]
        if not matches:
            raise ValueError(f"LoRA target module {target!r} does not exist in {type(model).__name__}; "
                             f"layers LoRA can adapt: {leaves}")
        bad = sorted({type(m).__name__ for m in matches if type(m).__name__ not in LORA_LAYER_TYPES})
        if bad:
            raise ValueError(f"LoRA target module {target!r} is a {bad[0]}, not a layer LoRA can adapt; "
                             f"name linear layers instead: {leaves}")


def check_unadapted(model: nn.Module) -> None:
    """Raise if ``model`` already holds peft adapter layers, e.g. from an earlier ``fit`` on this very object.

    Adapters are attached in place (the base is never copied), so a second ``fit``, ``load`` or
    ``build_learner`` on the same object would nest new adapters over the earlier ones, whose values then
    silently become part of the "frozen" base.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError(f"model ({type(model).__name__}) already holds peft adapter layers, e.g. from an earlier "
                         "metalearn.fit or metalearn.load on this very object; pass a fresh copy of the base model, "
                         "or take the earlier LoRA layers out first with learner.adapted.lora.unload()")


def targets_conv1d(model: nn.Module, targets) -> bool:
    """Whether LoRA's targets are transformers ``Conv1D`` layers (GPT-2's), which store weights transposed.

    peft needs ``fan_in_fan_out=True`` for them; told nothing, it sets it itself with a warning. With no
    targets named, peft's defaults for such a model (GPT-2: ``c_attn``) are Conv1D layers too.
    """
    conv1d = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    return bool(conv1d) and (targets is None or any(t.rsplit(".", 1)[-1] in conv1d for t in targets))


def attach(base: nn.Module, model_type: str, config: AdapterConfig, tokenizer=None,
           base_name: Optional[str] = None) -> Adapted:
    """Wrap ``base`` with peft LoRA and/or a soft prompt as ``config`` asks.

    A plain ``nn.Module`` without ``target_modules`` is meta-learned whole (classic MAML). ``base_name``
    (a Hub id or folder; None for a model built from a config, recorded as "" as transformers does) is what
    the saved adapter configs record as ``base_model_name_or_path``; ``base``'s own ``name_or_path`` may be a
    temporary folder (the NF4 reload of an in-memory model), which peft would record otherwise.
    """
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    if config.prompt_tokens and model_type == "module":
        raise ValueError("prompt_tokens > 0 needs a transformers model with token embeddings; set prompt_tokens=0")
    if config.prefix_tokens and model_type == "module":
        raise ValueError("prefix_tokens > 0 needs a transformers model with attention layers; set prefix_tokens=0")
    if config.prefix_tokens and model_type == "seq2seq":
        raise ValueError("prefix_tokens > 0 on an encoder-decoder model: peft's prefix reaches the decoder only (the "
                         "encoder reads no attention cache), which is not prefix tuning; use prompt_tokens and/or LoRA")
    if model_type == "module" and (not config.lora or config.target_modules is None):
        for p in base.parameters():
            p.requires_grad_(True)
        log.info("plain nn.Module without LoRA target modules: all of its parameters are meta-learned")
        return Adapted(base, None, None, tuple(n for n, _ in base.named_parameters()))
    trainable: list[nn.Parameter] = []
    module, lora, prompt, prefix = base, None, None, None
    if config.lora:
        if config.target_modules is not None:
            check_target_modules(base, config.target_modules)
        lora_cfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r,
                              lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                              init_lora_weights=config.init_lora_weights, task_type=PEFT_TASK_TYPES.get(model_type),
                              fan_in_fan_out=targets_conv1d(base, config.target_modules))
        try:
            with ignoring(PEFT_WRAP):
                lora = get_peft_model(base, lora_cfg)
        except ValueError as err:
            raise ValueError(f"peft could not add LoRA to {type(base).__name__}: {err}. Set "
                             "adapter.target_modules to names of its linear layers") from None
        lora.peft_config["default"].base_model_name_or_path = base_name or ""
        trainable += [p for p in lora.parameters() if p.requires_grad]
        module = lora
    if config.prompt_tokens:
        inner = lora.base_model.model if lora is not None else base
        prompt = prompt_learning(inner, PromptTuningConfig(task_type=PEFT_TASK_TYPES[model_type],
                                                           num_virtual_tokens=config.prompt_tokens,
                                                           base_model_name_or_path=base_name or ""))
        if config.prompt_init_text:
            init_prompt_from_text(prompt, config.prompt_init_text, tokenizer)
        trainable += [p for p in prompt.parameters() if p.requires_grad]
        module = prompt
    if config.prefix_tokens:
        inner = lora.base_model.model if lora is not None else base
        prefix = prompt_learning(inner, PrefixTuningConfig(task_type=PEFT_TASK_TYPES[model_type],
                                                           num_virtual_tokens=config.prefix_tokens,
                                                           prefix_projection=config.prefix_projection,
                                                           encoder_hidden_size=config.prefix_hidden,
                                                           init_weights=config.prefix_init,
                                                           base_model_name_or_path=base_name or ""))
        trainable += [p for p in prefix.prompt_encoder.parameters() if p.requires_grad]
        module = prefix
    ids = {id(p) for p in trainable}
    float64 = any(p.dtype == torch.float64 for p in base.parameters())
    for p in trainable:
        p.requires_grad_(True)
        if float64:  # peft creates adapters in float32; a float64 base (gradient checks) wants float64
            p.data = p.data.double()
    names = tuple(n for n, p in module.named_parameters() if id(p) in ids)
    return Adapted(module, lora, prompt, names, prefix)


def prompt_learning(model: nn.Module, peft_config) -> nn.Module:
    """A prompt-learning PeftModel (soft prompt or prefix) over ``model``, which may already hold LoRA layers.

    Built with peft's PeftModel class for the task type, as ``PeftModel.from_pretrained`` does, not with
    ``get_peft_model``: that one warns "You are trying to modify a model with PEFT for a second time"
    whenever the model holds tuner layers, a guard against re-wrapping by mistake; here the LoRA layers
    are meant to stay under the prompt.
    """
    from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

    with ignoring(PEFT_WRAP):
        return MODEL_TYPE_TO_PEFT_MODEL_MAPPING[peft_config.task_type](model, peft_config)


def init_prompt_from_text(prompt_model: nn.Module, text: str, tokenizer) -> None:
    """Initialize the soft prompt with the embeddings of ``text``'s tokens (repeated to length)."""
    if tokenizer is None:
        raise ValueError("adapter.prompt_init_text needs a tokenizer; pass one or drop prompt_init_text")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"adapter.prompt_init_text={text!r} has no tokens; give a non-empty text")
    n = prompt_model.peft_config["default"].num_virtual_tokens
    ids = torch.tensor((ids * n)[:n])
    with torch.no_grad():
        emb = prompt_model.get_input_embeddings()(ids)
        prompt_model.prompt_encoder["default"].embedding.weight.copy_(emb.float())


def adaptable_params(adapted: Adapted) -> Params:
    """The adaptable tensors by name (views of the module's own parameters)."""
    named = dict(adapted.module.named_parameters())
    return {n: named[n] for n in adapted.names}


def write_params(adapted: Adapted, params: Params) -> None:
    """Copy tensor values into the module's adapter parameters (before saving or plain inference)."""
    named = dict(adapted.module.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            if name in named:
                named[name].copy_(value.detach().to(named[name].dtype))


def save_adapters(adapted: Adapted, path: str) -> None:
    """Write the standard peft adapter folder(s) for the current parameter values.

    A reparameterized prefix is written as peft writes it: the prefix the MLP computes (what
    ``PeftModel.from_pretrained`` runs with); the MLP itself is not part of peft's format.
    ``save_embedding_layers=False``: the base is frozen and its vocabulary never resized, so there are no
    embedding weights to save; peft's "auto" would otherwise look the base model up (on the Hub) at every save.
    """
    for peft_model, sub in adapted.peft_parts():
        folder = os.path.join(path, sub) if sub else path
        peft_model.save_pretrained(folder, save_embedding_layers=False)
        _sort_set_fields(peft_model.peft_config["default"], folder)


def _sort_set_fields(peft_config, folder: str) -> None:
    """Rewrite adapter_config.json with set-valued fields (LoRA's ``target_modules``) sorted.

    peft writes a set as ``list(set)``, whose order follows string hashing and so changes with
    PYTHONHASHSEED: the same seed would otherwise give different bytes on every run.
    """
    fields = [k for k, v in vars(peft_config).items() if isinstance(v, (set, frozenset))]
    if not fields:
        return
    path = os.path.join(folder, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for key in fields:
        if isinstance(data.get(key), list):
            data[key] = sorted(data[key])
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))  # peft's own layout


def load_adapters(base: nn.Module, path: str) -> nn.Module:
    """Load what ``save_adapters`` wrote onto ``base`` with peft alone (no metalearn state needed)."""
    from peft import PeftModel

    has_root = os.path.exists(os.path.join(path, "adapter_config.json"))  # LoRA, or a lone soft prompt or prefix
    with ignoring(PEFT_WRAP):
        model = PeftModel.from_pretrained(base, path) if has_root else base
        for sub in (PROMPT_SUBFOLDER, PREFIX_SUBFOLDER):
            folder = os.path.join(path, sub)
            if os.path.exists(os.path.join(folder, "adapter_config.json")):
                inner = model.base_model.model if has_root else base
                model = PeftModel.from_pretrained(inner, folder)
    return model
