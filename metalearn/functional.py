"""A task's loss as a pure function of the adaptable parameters (torch.func style).

Only the adaptable tensors are passed to ``torch.func.functional_call``; the frozen (possibly
4-bit) base is used in place and never copied. A classification head is not a module: its
tensors ``head.weight`` (n_way, hidden) and ``head.bias`` (n_way,) live in the same dict, so a
head initialized from prototypes (ProtoMAML) is adapted and differentiated like any other tensor.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .model import TaskModel
from .types import Batch, Params

HEAD_KEYS = ("head.weight", "head.bias")


def module_params(params: Params) -> Params:
    """The entries that belong to the module (everything but the head)."""
    return {k: v for k, v in params.items() if not k.startswith("head.")}


def outputs(model: TaskModel, params: Params, batch: Batch) -> torch.Tensor:
    """The model's forward with ``params`` substituted for its adaptable tensors."""
    return functional_call(model, {"module." + k: v for k, v in module_params(params).items()}, (batch,),
                           strict=False)


def pooled(model: TaskModel, params: Params, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Pooled features (len(texts), hidden) in the given order, computed in batches of texts of similar length.

    One padded batch of texts of mixed lengths spends much of its compute on padding (half, for
    CLINC150 queries); sorted by token count, each batch pads only to its own longest text.
    """
    lengths = [len(ids) for ids in model.tokenizer(list(texts), truncation=True, max_length=model.max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = model.encode({"text": [texts[i] for i in rows], "label": [0] * len(rows)}, "classification")
        for i, feat in zip(rows, outputs(model, params, batch)):  # (rows, hidden)
            out[i] = feat
    return torch.stack(out)


def logits(model: TaskModel, params: Params, batch: Batch, temperature: Optional[float] = None) -> torch.Tensor:
    """Classification logits (batch, n_way) from pooled features and the head in ``params``."""
    return head_logits(model, params, outputs(model, params, batch), temperature)


def head_logits(model: TaskModel, params: Params, feats: torch.Tensor,
                temperature: Optional[float] = None) -> torch.Tensor:
    """Logits (batch, n_way) of pooled features (batch, hidden) under the head in ``params``.

    ``model.head_metric == "cosine"``: cos(feature, head row) / temperature (Chen et al. 2019's
    cosine classifier; ``temperature`` replaces the model's own); otherwise a linear layer on the features.
    """
    if model.head_metric == "cosine":
        scale = model.head_temperature if temperature is None else temperature
        return F.normalize(feats, dim=-1) @ F.normalize(params["head.weight"], dim=-1).t() / scale
    return F.linear(feats, params["head.weight"], params.get("head.bias"))


def task_loss(model: TaskModel, params: Params, batch: Batch, kind: str,
              temperature: Optional[float] = None) -> torch.Tensor:
    """MSE (regression), cross-entropy (classification; a cosine head at ``temperature`` if given) or completion NLL."""
    if kind == "regression":
        out = outputs(model, params, batch)
        if out.shape != batch["y"].shape:
            raise ValueError(f"regression targets y have shape {tuple(batch['y'].shape)} but the model outputs "
                             f"{tuple(out.shape)}, so MSE would broadcast them against each other; give y the "
                             f"shape of the outputs (e.g. y.reshape{tuple(out.shape)})")
        return F.mse_loss(out, batch["y"])
    if kind == "classification":
        return feature_loss(model, params, outputs(model, params, batch), batch["label"], temperature)
    return outputs(model, params, batch)


def feature_loss(model: TaskModel, params: Params, feats: torch.Tensor, labels: torch.Tensor,
                 temperature: Optional[float] = None) -> torch.Tensor:
    """Classification cross-entropy of pooled features (batch, hidden) under the head in ``params``."""
    return F.cross_entropy(head_logits(model, params, feats, temperature), labels)


def prototype_head(model: TaskModel, params: Params, support: Batch, n_way: int) -> Params:
    """ProtoMAML's head: a classifier equal to nearest-prototype on the support set (Triantafillou et al. 2020).

    Euclidean: with prototypes c_k, ``-||f - c_k||^2 = 2 c_k.f - ||c_k||^2 - ||f||^2``, so W = 2c and
    b = -||c||^2. Cosine: W = c (the logits normalize both sides). Stays differentiable in ``params``
    (the meta-gradient flows through the prototypes).
    """
    return prototypes(model, outputs(model, params, support), support["label"], n_way)


def prototypes(model: TaskModel, feats: torch.Tensor, labels: torch.Tensor, n_way: int) -> Params:
    """``prototype_head`` from support features (n, hidden) and labels (n,) already computed."""
    onehot = F.one_hot(labels, n_way).to(feats.dtype)  # (n, n_way)
    protos = onehot.t() @ feats / onehot.sum(0).clamp_min(1.0).unsqueeze(1)  # (n_way, hidden)
    if model.head_metric == "cosine":
        return {"head.weight": protos}
    return {"head.weight": 2 * protos, "head.bias": -(protos * protos).sum(1)}
