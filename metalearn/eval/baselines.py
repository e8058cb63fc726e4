"""Baselines that run through the same harness, on the same episodes, as the meta-learned methods.

* ``zero_shot``: the frozen base with every adapter switched off and no adaptation. Generation: greedy
  decoding of the bare prompt. Classification with an encoder: the nearest-prototype classifier on
  frozen features with the learner's own prototype head (Euclidean or cosine), i.e. ProtoMAML at step 0
  without adapters (Snell et al. 2017).
* ``in_context``: the frozen base with the support examples written into the prompt (causal LMs only).
* ``prototypes``: cosine nearest-prototype on L2-normalized frozen features (encoders only).
* ``linear_probe``: logistic regression (scikit-learn) fit on the frozen support features (encoders only).
* ``random_init``: a fresh peft init (LoRA ``B = 0`` and a random ``A``, a random soft prompt, or a
  freshly initialized plain module) fine-tuned on the support set with the same inner loop, steps and
  learning-rate search as every other method.

The multi-task baseline is a Learner like any other: ``metalearn.fit(family, model, method="multitask")``.
Only ``random_init`` adapts; the others ignore the step count. Each baseline sees the support set
only; the query set is used for scoring alone.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..adapters import adaptable_params, init_prompt_from_text, write_params
from ..config import RunConfig
from ..functional import head_logits, prototypes
from ..learner import Learner
from ..model import TaskModel
from ..tasks.task import Task
from . import metrics

__all__ = ["ADAPTING", "BASELINES", "FEATURE_BASELINES", "check_baseline", "feature_scores", "frozen_base",
           "frozen_scores", "in_context_prompts", "random_init"]

BASELINES = ("in_context", "linear_probe", "prototypes", "random_init", "zero_shot")
ADAPTING = ("random_init",)
"""Baselines that run the inner loop (and so get a learning-rate search and one result per step count)."""
FEATURE_BASELINES = ("linear_probe", "prototypes", "zero_shot")
"""Baselines that, on an encoder's classification tasks, only read frozen pooled features (cacheable per text)."""

_APPLIES = {
    "in_context": (("causal",), "the support examples go into a causal LM's prompt"),
    "linear_probe": (("encoder",), "it fits a classifier on an encoder's pooled features"),
    "prototypes": (("encoder",), "it classifies an encoder's pooled features"),
    "random_init": (("causal", "encoder", "seq2seq", "module"), ""),
    "zero_shot": (("causal", "encoder", "seq2seq"), "a plain nn.Module has no frozen pretrained behaviour to score"),
}


def check_baseline(name: str, model_type: str, kind: str) -> None:
    """Raise ``ValueError`` if baseline ``name`` is unknown or does not apply to this model and task kind."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)} (the multi-task baseline is a "
                         "Learner: metalearn.fit(family, model, method='multitask'))")
    types, why = _APPLIES[name]
    if model_type not in types:
        raise ValueError(f"baseline {name!r} does not apply to a {model_type!r} model ({why}); drop it from "
                         f"baselines or use a {' / '.join(types)} model")
    if name in ("in_context",) and kind != "generation":
        raise ValueError(f"baseline {name!r} needs a generation family (prompt/completion), not {kind!r}; drop it")


# ---------------------------------------------------------------- random init


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


# ---------------------------------------------------------------- the frozen base


@contextlib.contextmanager
def frozen_base(learner: Learner) -> Iterator[TaskModel]:
    """A TaskModel over the learner's base with the soft prompt or prefix and LoRA switched off (nothing copied)."""
    adapted, model = learner.adapted, learner.model
    module = adapted.soft.base_model if adapted.soft is not None else adapted.module
    frozen = TaskModel(module, model.model_type, model.tokenizer, 0, model.max_length,
                       getattr(model, "head_metric", "euclidean"), getattr(model, "head_temperature", 0.05))
    with adapted.lora.disable_adapter() if adapted.lora is not None else contextlib.nullcontext():
        yield frozen


def in_context_prompts(support: dict, prompts: list[str], tokenizer, budget: int) -> list[str]:
    """Each prompt preceded by the support examples (``prompt + completion``), oldest dropped to fit ``budget`` tokens."""
    demos = []
    for p, c in zip(support["prompt"], support["completion"]):
        demo = p + c
        demos.append(demo if demo.endswith("\n") else demo + "\n\n")
    out = []
    for prompt in prompts:
        kept = list(demos)
        while kept and len(tokenizer("".join(kept) + prompt, add_special_tokens=False)["input_ids"]) > budget:
            kept.pop(0)
        out.append("".join(kept) + prompt)
    return out


def frozen_scores(name: str, learner: Learner, task: Task, *, generate: bool = True,
                  max_new_tokens: int = 32) -> dict[str, float]:
    """Score a non-adapting baseline on ``task`` (support for fitting, query for scoring)."""
    from .score import score_generation

    with frozen_base(learner) as frozen:
        if task.kind == "classification":
            return _feature_baseline(name, frozen, task)
        prompts = list(task.query["prompt"])
        if name == "in_context":
            prompts = in_context_prompts(task.support, prompts, frozen.tokenizer, frozen.max_length - max_new_tokens)
        return score_generation(frozen, None, {}, task, prompts=prompts, generate=generate,
                                max_new_tokens=max_new_tokens)


def _feature_baseline(name: str, frozen: TaskModel, task: Task) -> dict[str, float]:
    with torch.no_grad():
        support = frozen.encode(task.support, "classification")
        query = frozen.encode(task.query, "classification")
        fs, fq = frozen.features(support), frozen.features(query)  # (n_support, hidden), (n_query, hidden)
    return feature_scores(name, frozen, fs, support["label"], fq, query["label"], task.n_way)


def feature_scores(name: str, frozen: TaskModel, fs: torch.Tensor, ys: torch.Tensor, fq: torch.Tensor,
                   yq: torch.Tensor, n_way: int) -> dict[str, float]:
    """Scores of a frozen-feature baseline from support features/labels and query features/labels."""
    out: dict[str, float] = {}
    yq = yq.cpu().numpy()
    with torch.no_grad():
        if name == "zero_shot":  # the learner's own prototype head (ProtoMAML at step 0), without adapters
            lg = head_logits(frozen, prototypes(frozen, fs, ys, n_way), fq).float().cpu()  # (n_query, n_way)
            out["nll"] = float(F.cross_entropy(lg, torch.as_tensor(yq)))
            pred = lg.argmax(-1).numpy()
        else:
            fs = F.normalize(fs.float(), dim=-1).cpu()  # (n_support, hidden)
            fq = F.normalize(fq.float(), dim=-1).cpu()  # (n_query, hidden)
            ys = ys.cpu()
    if name == "prototypes":
        protos = F.normalize(F.one_hot(ys, n_way).to(fs.dtype).t() @ fs, dim=-1)  # (n_way, hidden)
        pred = (fq @ protos.t()).argmax(-1).numpy()
    elif name == "linear_probe":
        from sklearn.linear_model import LogisticRegression

        probe = LogisticRegression(C=10.0, max_iter=1000).fit(fs.numpy(), ys.numpy())
        proba = np.full((len(yq), n_way), 1e-12)
        proba[:, probe.classes_] = np.clip(probe.predict_proba(fq.numpy()), 1e-12, None)
        out["nll"] = float(-np.log(proba[np.arange(len(yq)), yq]).mean())
        pred = proba.argmax(-1)
    out["accuracy"] = metrics.accuracy(pred, yq)
    out["macro_f1"] = metrics.macro_f1(pred, yq, n_way)
    return out
