"""Baselines that run through the same harness, on the same episodes, as the meta-learned methods.

* ``zero_shot``: the frozen base with every adapter switched off and no adaptation. Generation: greedy
  decoding of the bare prompt. Classification with an encoder: the nearest-prototype classifier on
  frozen features with the learner's own prototype head (Euclidean or cosine), i.e. ProtoMAML at step 0
  without adapters (Snell et al. 2017).
* ``in_context``: the frozen base with the support examples written into the prompt (causal LMs only).
* ``prototypes``: cosine nearest-prototype on L2-normalized frozen features (encoders only).
* ``linear_probe``: logistic regression (scikit-learn) fit on the frozen support features (encoders only).
* ``setfit``: SetFit (Tunstall et al. 2022) trained per episode on the support set from the learner's own
  encoder folder or Hub id (``setfit_baseline``; the optional extra ``metalearn[setfit]``).
* ``random_init``: a fresh peft init (LoRA ``B = 0`` and a random ``A``, a random soft prompt, or a
  freshly initialized plain module; ``metalearn.views.random_init``) fine-tuned on the support set with the
  same inner loop, steps and learning-rate search as every other method.

The multi-task baseline is a Learner like any other: ``metalearn.fit(family, model, method="multitask")``.
Only ``random_init`` adapts; the others ignore the step count. Each baseline sees the support set
only; the query set is used for scoring alone.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..functional import head_logits, prototypes
from ..learner import Learner
from ..model import TaskModel
from ..tasks.task import Task
from . import metrics
from .setfit_baseline import SetFitOptions, check_setfit, setfit_scores

__all__ = ["ADAPTING", "BASELINES", "FEATURE_BASELINES", "check_baseline", "encoder_source", "feature_scores",
           "frozen_scores", "in_context_prompts", "setfit_episode"]

BASELINES = ("in_context", "linear_probe", "prototypes", "random_init", "setfit", "zero_shot")
ADAPTING = ("random_init",)
"""Baselines that run the inner loop (and so get a learning-rate search and one result per step count)."""
FEATURE_BASELINES = ("linear_probe", "prototypes", "zero_shot")
"""Baselines that, on an encoder's classification tasks, only read frozen pooled features (cacheable per text)."""

_APPLIES = {
    "in_context": (("causal",), "the support examples go into a causal LM's prompt"),
    "linear_probe": (("encoder",), "it fits a classifier on an encoder's pooled features"),
    "prototypes": (("encoder",), "it classifies an encoder's pooled features"),
    "random_init": (("causal", "encoder", "seq2seq", "module"), ""),
    "setfit": (("encoder",), "it fine-tunes a sentence encoder"),
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
    if name == "setfit":
        if kind != "classification":
            raise ValueError(f"baseline 'setfit' classifies texts; a {kind!r} family has no classes: drop it")
        check_setfit()


# ---------------------------------------------------------------- frozen-base baselines


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

    with learner.frozen() as frozen:
        if task.kind == "classification":
            return _feature_baseline(name, frozen, task)
        prompts = list(task.query["prompt"])
        if name == "in_context":
            prompts = in_context_prompts(task.support, prompts, frozen.tokenizer, frozen.max_length - max_new_tokens)
        return score_generation(frozen, task, prompts=prompts, generate=generate,
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


# ---------------------------------------------------------------- SetFit


def encoder_source(learner: Learner) -> str:
    """The folder or Hub id the learner's encoder was loaded from (SetFit loads its own copy from there)."""
    name = learner.config.base.name_or_path
    if not name:
        raise ValueError("baseline 'setfit' loads the learner's encoder by name, but this learner's base was built in "
                         "memory (config.base.name_or_path is None); save the encoder with save_pretrained(folder) "
                         "and fit with model_name=folder, or drop 'setfit'")
    return name


def setfit_episode(learner: Learner, task: Task, options: SetFitOptions, seed: int) -> dict[str, float]:
    """SetFit trained on ``task.support`` from the learner's encoder, scored on ``task.query``."""
    return setfit_scores(encoder_source(learner), list(task.support["text"]), np.asarray(task.support["label"]),
                         list(task.query["text"]), np.asarray(task.query["label"]), task.n_way, options, seed)
