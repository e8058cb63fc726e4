"""Metrics for one episode's query set, and the 95% confidence interval of a mean.

Classification: accuracy and macro-F1 (scikit-learn). Generation: exact match, ROUGE-1/2/L F-measure
(``rouge-score``, Lin 2004) and corpus BLEU over the episode's query set (``sacrebleu``, Post 2018).
Regression: MSE. Every episode also reports its query NLL (cross-entropy / completion NLL) where
the task kind has one. Scores are in [0, 1] except BLEU, which is sacrebleu's 0-100 scale.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["HIGHER_IS_BETTER", "PRIMARY", "accuracy", "bleu", "classification_scores", "exact_match", "macro_f1",
           "mean_ci", "mse", "normalize", "paired_ci", "rouge", "rouge_chars", "t95"]

HIGHER_IS_BETTER = {"accuracy": True, "bleu": True, "exact_match": True, "macro_f1": True, "mse": False,
                    "nll": False, "rouge1": True, "rouge2": True, "rougeL": True, "rougeL_char": True}
"""Direction of every metric the harness reports."""

PRIMARY = {"classification": "accuracy", "generation": "exact_match", "regression": "mse"}
"""The metric tables and plots lead with, per task kind."""

def t95(n: int) -> float:
    """The two-sided 95% quantile of Student's t with ``n - 1`` degrees of freedom (1.964 at n = 600; 2.776 at 5)."""
    return _t_quantile(n, 0.95)


def _t_quantile(n: int, confidence: float) -> float:
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, n - 1))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval: ``t95(n) * std / sqrt(n)`` (or at ``confidence``).

    ``std`` is the sample standard deviation (ddof=1). With 600 episodes the t quantile is 1.964, the
    1.96 of the few-shot literature's normal approximation; with 5 seeds (the full-label protocol) it is
    2.776, where 1.96 would claim an interval 30% too narrow. With one value the width is NaN.

    Example:
        >>> mean_ci([1.0, 2.0, 3.0])  # std = 1, t95(3) = 4.303
        (2.0, 2.4841377...)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is invalid: give a level between 0 and 1, e.g. 0.95")
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(_t_quantile(x.size, confidence) * x.std(ddof=1) / math.sqrt(x.size))


def paired_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of the per-episode differences ``a - b`` and its 95% interval (a paired comparison).

    Both methods ran on the same episodes, so the episode-to-episode variation cancels and the
    interval is much tighter than two separate intervals suggest.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same episodes: got {len(a)} and {len(b)} values")
    return mean_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def accuracy(pred: Sequence[int], true: Sequence[int]) -> float:
    """Fraction of predictions equal to the labels."""
    pred, true = np.asarray(pred), np.asarray(true)
    return float((pred == true).mean())


def macro_f1(pred: Sequence[int], true: Sequence[int], n_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 over the episode's classes (scikit-learn)."""
    from sklearn.metrics import f1_score

    labels = list(range(n_classes)) if n_classes else sorted(set(np.asarray(true).tolist()))
    return float(f1_score(np.asarray(true), np.asarray(pred), labels=labels, average="macro", zero_division=0))


def mse(pred, true) -> float:
    """Mean squared error over all outputs."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float((diff ** 2).mean())


def normalize(text: str) -> str:
    """Whitespace-trimmed, inner runs of whitespace collapsed (case is kept)."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after ``normalize``."""
    _check_pairs(predictions, references)
    return float(np.mean([normalize(p) == normalize(r) for p, r in zip(predictions, references)]))


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (``rouge-score``, with Porter stemming)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]  # score(target, prediction)
    return {k: float(np.mean([s[k].fmeasure for s in scores])) for k in keys}


class _Characters:
    """A rouge-score tokenizer whose tokens are the characters (whitespace dropped)."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def rouge_chars(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over characters: partial credit where an output is one word (``"acaf"`` vs ``"acef"``).

    rouge-score's own tokenizer makes such an output a single token, so its ROUGE-L equals exact match there.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Characters())
    return float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU of the set (sacrebleu: 13a tokenization, exponential smoothing), 0-100.

    With effective order: n-gram orders that no prediction is long enough to have are left out (as
    sacrebleu's sentence BLEU does), so one-word outputs that match score 100 rather than 0.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references)
    return float(BLEU(effective_order=True).corpus_score(list(predictions), [list(references)]).score)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; give one per reference")


def classification_scores(lg: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-F1 and NLL of logits (n_query, n_way) against the true labels (n_query,)."""
    lg = lg.float()
    pred = lg.argmax(-1).cpu().numpy()
    return {"accuracy": accuracy(pred, true.cpu().numpy()),
            "macro_f1": macro_f1(pred, true.cpu().numpy(), lg.shape[-1]),
            "nll": float(F.cross_entropy(lg, true))}
