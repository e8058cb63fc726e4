"""Score parameters on a task's query set: the only place the evaluation looks at query data.

Adaptation never happens here; these functions take finished parameters (or a frozen model) and
return a flat ``{metric: value}`` dict for one episode.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..functional import head_logits, logits, outputs, pooled
from ..learner import Learner
from ..model import TaskModel
from ..tasks.task import Task
from ..types import Params
from . import metrics
from .metrics import classification_scores

__all__ = ["decode_budget", "score_generation", "score_params", "stop_at_newline"]


def score_params(learner: Learner, params: Params, task: Task, *, generate: bool = True,
                 max_new_tokens: int = 32, by_length: Optional[int] = None) -> dict[str, float]:
    """Metrics of adapted ``params`` on ``task.query``: MSE; accuracy/macro-F1/NLL; or NLL/EM/ROUGE/BLEU.

    ``by_length=B`` (encoder classification): encode the query texts in batches of at most B texts of
    similar length (``functional.pooled``) instead of one padded batch: less padding, the same numbers up
    to floating-point rounding.
    """
    query, model = task.query, learner.model
    with torch.no_grad():
        if task.kind == "regression":
            batch = model.encode(query, "regression")
            return {"mse": metrics.mse(outputs(model, params, batch).cpu(), batch["y"].cpu())}
        if task.kind == "classification":
            if by_length and model.model_type == "encoder":
                feats = pooled(model, params, list(query["text"]), by_length)  # (n_query, hidden)
                labels = torch.as_tensor(query["label"]).long().to(feats.device)
                return classification_scores(head_logits(model, params, feats), labels)
            batch = model.encode(query, "classification")
            return classification_scores(logits(model, params, batch), batch["label"])
    learner.write_params(params)
    return score_generation(model, task, generate=generate, max_new_tokens=max_new_tokens)


def score_generation(model: TaskModel, task: Task, *, prompts: Optional[list[str]] = None, generate: bool = True,
                     max_new_tokens: int = 32) -> dict[str, float]:
    """NLL of the reference completions, greedy-decoding metrics, and label accuracy for verbalized tasks.

    ``model`` scores with the adapter values its modules hold (``Learner.write_params`` puts adapted ones
    there; a frozen base holds none); ``prompts`` replaces the query prompts (the in-context baseline puts
    the support set in front).
    """
    prompts = list(task.query["prompt"]) if prompts is None else prompts
    refs = list(task.query["completion"])
    out: dict[str, float] = {}
    with torch.no_grad():
        out["nll"] = float(model.sequence_nll(model.encode_generation(prompts, refs)).float().mean())
        if "label" in task.query and task.label_names:
            pred = _rank_label_words(model, prompts, task)
            true = torch.as_tensor(task.query["label"]).numpy()
            out["accuracy"] = metrics.accuracy(pred, true)
            out["macro_f1"] = metrics.macro_f1(pred, true, len(task.label_names))
    if generate:
        from ..generate import greedy

        texts = greedy(model, None, {}, prompts, max_new_tokens)  # the values already in the modules
        if stop_at_newline(task):
            texts = [_first_line(t) for t in texts]
            refs = [_first_line(r) for r in refs]
        out["exact_match"] = metrics.exact_match(texts, refs)
        out.update(metrics.rouge(texts, refs))
        out["rougeL_char"] = metrics.rouge_chars(texts, refs)
        out["bleu"] = metrics.bleu(texts, refs)
    return out


def _rank_label_words(model: TaskModel, prompts: list[str], task: Task):
    """Predicted class per query: the label word with the lowest completion NLL (per token)."""
    first = task.support["completion"][0]  # the text around a label word, read from the support set
    word = task.label_names[int(torch.as_tensor(task.support["label"])[0])]
    prefix = first[: len(first) - len(word)] if first.endswith(word) else ""
    n_way = len(task.label_names)
    cand_prompts = [p for p in prompts for _ in range(n_way)]
    cand_completions = [prefix + w for _ in prompts for w in task.label_names]
    nll = model.sequence_nll(model.encode_generation(cand_prompts, cand_completions)).float()
    return nll.view(len(prompts), n_way).argmin(-1).cpu().numpy()


def stop_at_newline(task: Task) -> bool:
    """True when every *support* completion is one line: decoded text is then cut at its first newline."""
    return all("\n" not in c.strip() for c in task.support["completion"])


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.split("\n", 1)[0] if stripped else ""


def decode_budget(task: Task, tokenizer, cap: int = 128) -> int:
    """Greedy-decoding length from the support set only: twice the longest support completion, plus 4 tokens."""
    longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in task.support["completion"])
    return min(cap, 2 * longest + 4)
