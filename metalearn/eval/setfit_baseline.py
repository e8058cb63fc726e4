"""SetFit as a few-shot baseline, scored on the same episodes as metalearn's methods.

SetFit (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts") is what practitioners reach for
when they need a text classifier from a handful of examples. Per episode, :func:`setfit_scores`

1. loads a fresh ``SetFitModel`` from the encoder the learner uses (a sentence-transformers body plus a
   scikit-learn logistic-regression head), so no episode sees another's training;
2. fine-tunes the body contrastively on pairs of support texts (same class: cosine target 1, different
   classes: 0; ``CosineSimilarityLoss``), with SetFit's ``Trainer``;
3. fits the logistic-regression head on the fine-tuned support embeddings;
4. predicts the query texts and scores them with the harness's own metrics.

:class:`SetFitOptions` defaults are SetFit's own ``TrainingArguments`` defaults (setfit 1.2): batch size 16,
one epoch over the pairs, learning rate 2e-5 with 10% warm-up, and the "oversampling" pair strategy, which
draws as many same-class as different-class pairs, each different-class pair at least once. For an N-way
K-shot support set that is about ``N*K * (N-1)*K`` pairs: 500 for 5-way 5-shot, 5,250 for 15-way 5-shot.
``num_iterations=I`` instead draws ``2 * I * N*K`` pairs (SetFit's pre-1.0 behaviour; the paper used 20).

Cost: the contrastive phase dominates, and grows with the number of pairs: quadratically in the support size
under "oversampling", linearly with ``num_iterations``, capped by ``max_steps``. Measured on all-MiniLM-L6-v2,
one CPU thread of a shared machine, per 5-way 5-shot CLINC150 episode: 20-30 s with the defaults (500 pairs,
32 steps), 12-17 s with ``num_iterations=5`` (250 pairs), 55-70 s with ``num_iterations=20`` (1,000 pairs);
the first call in a process also pays 10-20 s of imports. A 15-way 5-shot episode (5,250 pairs) takes about
ten times as long as a 5-way one.

SetFit's pair sampler shuffles with its own fixed seed; ``seed`` drives the data order, dropout and the
head, and the caller's global random states (``random``, NumPy, torch) are left as they were.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .metrics import accuracy, macro_f1

__all__ = ["MIN_SETFIT", "SAMPLING_STRATEGIES", "SetFitOptions", "check_setfit", "setfit_scores"]

MIN_SETFIT = "1.2"
"""Oldest setfit this baseline is verified with (1.2.0, with transformers 5.24 and torch 2.13); the extra pins it."""

SAMPLING_STRATEGIES = ("oversampling", "undersampling", "unique")
"""SetFit's ways of drawing contrastive pairs when ``num_iterations`` is not set."""

INSTALL = "pip install 'metalearn[setfit]'"
MISSING = f"baseline 'setfit' needs the optional extra: {INSTALL}"


@dataclass(frozen=True)
class SetFitOptions:
    """SetFit's training options that matter for a baseline; defaults are ``setfit.TrainingArguments``'.

    The head is scikit-learn's logistic regression, as in the paper, so SetFit's options for its
    differentiable head (``head_learning_rate``, the classifier halves of the tuple options, ``end_to_end``)
    do not apply and are not exposed. The seed is an argument of :func:`setfit_scores`, one per episode.

    Attributes:
        batch_size: Sentence pairs per step of the contrastive phase.
        num_epochs: Passes over the pairs in the contrastive phase.
        num_iterations: If set, draw ``2 * num_iterations * len(support)`` pairs and ignore
            ``sampling_strategy``; ``None`` lets ``sampling_strategy`` decide.
        sampling_strategy: ``"oversampling"``, ``"undersampling"`` or ``"unique"``.
        body_learning_rate: AdamW learning rate of the encoder in the contrastive phase.
        warmup_proportion: Fraction of the steps with a linearly rising learning rate, in [0, 1].
        max_steps: If positive, stop the contrastive phase after this many steps; ``-1`` for no limit.
        max_length: Token limit per text; ``None`` keeps the encoder's own.
    """

    batch_size: int = 16
    num_epochs: int = 1
    num_iterations: Optional[int] = None
    sampling_strategy: str = "oversampling"
    body_learning_rate: float = 2e-5
    warmup_proportion: float = 0.1
    max_steps: int = -1
    max_length: Optional[int] = None

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size, "e.g. 16 (SetFit's default)")
        _positive_int("num_epochs", self.num_epochs, "e.g. 1 (SetFit's default)")
        if self.num_iterations is not None:
            _positive_int("num_iterations", self.num_iterations, "e.g. 20, or None to use sampling_strategy")
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"SetFitOptions.sampling_strategy={self.sampling_strategy!r} is not one of "
                             f"{SAMPLING_STRATEGIES}: use 'oversampling' (SetFit's default)")
        lr = self.body_learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"SetFitOptions.body_learning_rate={lr!r} must be a positive finite number: "
                             "use e.g. 2e-5 (SetFit's default)")
        wp = self.warmup_proportion
        if isinstance(wp, bool) or not isinstance(wp, (int, float)) or not 0 <= wp <= 1:
            raise ValueError(f"SetFitOptions.warmup_proportion={wp!r} must be a number in [0, 1]: "
                             "use e.g. 0.1 (SetFit's default)")
        if self.max_steps != -1:
            _positive_int("max_steps", self.max_steps, "a positive step count, or -1 for no limit")
        if self.max_length is not None:
            _positive_int("max_length", self.max_length, "a positive token count, or None for the encoder's")

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (JSON-ready), field by field."""
        return dataclasses.asdict(self)


def _positive_int(name: str, value: Any, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"SetFitOptions.{name}={value!r} must be a positive integer: use {fix}")


def check_setfit() -> None:
    """Raise ``ImportError`` naming the extra to install unless a usable ``setfit`` is importable.

    Cheap (an import); call it before sampling episodes or loading models.

    Raises:
        ImportError: ``setfit`` is missing, fails to import, or is older than :data:`MIN_SETFIT`.
    """
    try:
        import setfit
    except ImportError as err:
        raise ImportError(f"{MISSING} ({err})") from err
    from packaging.version import Version

    found = getattr(setfit, "__version__", "0")
    if Version(found) < Version(MIN_SETFIT):
        raise ImportError(f"baseline 'setfit' needs setfit>={MIN_SETFIT}, found {found}: "
                          "pip install --upgrade 'metalearn[setfit]'")


def setfit_scores(encoder: str, support_texts: Sequence[str], support_labels: Sequence[int] | np.ndarray,
                  query_texts: Sequence[str], query_labels: Sequence[int] | np.ndarray, n_way: int,
                  options: SetFitOptions, seed: int) -> dict[str, float]:
    """Train a fresh SetFit model on one episode's support set and score its query set.

    Args:
        encoder: A sentence-transformers model: a local folder or a Hub id (the learner's encoder).
        support_texts: The support texts.
        support_labels: Their classes, integers in ``[0, n_way)``; at least two classes present.
        query_texts: The query texts.
        query_labels: Their classes, integers in ``[0, n_way)``.
        n_way: Number of classes in the episode (macro-F1 averages over all of them).
        options: SetFit's training options.
        seed: Seed of this episode's training; the same seed gives the same scores.

    Returns:
        ``{"accuracy", "macro_f1", "nll"}`` over the queries; ``nll`` is the mean ``-log p(true class)`` of the
        head's probabilities, clipped at 1e-12 (a class absent from the support gets 1e-12).

    Raises:
        ImportError: setfit is not installed (see :func:`check_setfit`).
        ValueError: the episode or the options are malformed.
    """
    check_setfit()
    if not isinstance(options, SetFitOptions):
        raise ValueError(f"options must be a SetFitOptions, got {type(options).__name__}: "
                         "pass SetFitOptions() for SetFit's defaults")
    ys = _labels("support", support_texts, support_labels, n_way)
    yq = _labels("query", query_texts, query_labels, n_way)
    if len(set(ys.tolist())) < 2:
        raise ValueError(f"setfit needs at least two classes in the support set, got only {sorted(set(ys.tolist()))}")

    from setfit import SetFitModel

    with _quiet(), _kept_global_rng(), tempfile.TemporaryDirectory(prefix="metalearn-setfit-") as scratch:
        model = _train(lambda: SetFitModel.from_pretrained(encoder), list(support_texts), ys.tolist(), options,
                       seed, scratch)
        pred = np.asarray(model.predict(list(query_texts), as_numpy=True))
        proba_head = np.asarray(model.predict_proba(list(query_texts), as_numpy=True), dtype=np.float64)
        classes = np.asarray(model.model_head.classes_)
    out = {"accuracy": accuracy(pred, yq), "macro_f1": macro_f1(pred, yq, n_way)}
    proba = np.full((len(yq), n_way), 1e-12)
    proba[:, classes] = np.clip(proba_head, 1e-12, None)
    out["nll"] = float(-np.log(proba[np.arange(len(yq)), yq]).mean())
    return out


def _labels(part: str, texts: Sequence[str], labels: Sequence[int] | np.ndarray, n_way: int) -> np.ndarray:
    """The labels as an int array, after checking they match the texts and lie in ``[0, n_way)``."""
    if isinstance(n_way, bool) or not isinstance(n_way, (int, np.integer)) or n_way < 2:
        raise ValueError(f"n_way={n_way!r} must be an integer >= 2")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{part}_texts must be a list of strings")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(texts) or len(y) == 0:
        raise ValueError(f"{part}_labels must be one integer per {part} text: got {y.shape} labels for "
                         f"{len(texts)} texts")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_way:
        raise ValueError(f"{part}_labels must be integers in [0, {n_way}), got {sorted(set(y.tolist()))}")
    return y.astype(np.int64)


def _train(model_init: Callable[[], Any], texts: list[str], labels: list[int], options: SetFitOptions, seed: int,
           scratch: str) -> Any:
    """SetFit's Trainer on the support set, writing only under ``scratch``; returns the trained model."""
    import torch
    from datasets import Dataset
    from setfit import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    args = TrainingArguments(
        output_dir=scratch, batch_size=options.batch_size, num_epochs=options.num_epochs,
        num_iterations=options.num_iterations, sampling_strategy=options.sampling_strategy,
        body_learning_rate=options.body_learning_rate, warmup_proportion=options.warmup_proportion,
        max_steps=options.max_steps, max_length=options.max_length, seed=seed,
        show_progress_bar=False, report_to="none", logging_strategy="no", save_strategy="no")
    # model_init: SetFit seeds before it builds the model, so the whole episode follows ``seed``
    trainer = Trainer(model_init=model_init, args=args,
                      train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    inner = trainer.st_trainer  # the sentence-transformers Trainer of the contrastive phase
    for callback in (ProgressCallback, PrinterCallback):  # its step bar and its printed log dicts
        inner.remove_callback(callback)
    inner.args.dataloader_pin_memory = torch.cuda.is_available()  # else torch warns on every DataLoader
    trainer.train()
    return trainer.model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Within the block: setfit's INFO/WARNING logs and the transformers and datasets bars are off."""
    import datasets
    import setfit.logging as setfit_logging  # setfit.trainer sets this to INFO when imported
    from transformers.utils import logging as hf_logging

    level = setfit_logging.get_verbosity()
    hf_bars = hf_logging.is_progress_bar_enabled()
    ds_bars = not datasets.are_progress_bars_disabled()
    setfit_logging.set_verbosity_error()  # "model_head.pkl not found ... random weights": we train it next
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        setfit_logging.set_verbosity(level)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _kept_global_rng() -> Iterator[None]:
    """Restore ``random``'s, NumPy's and torch's global random states on leaving (SetFit reseeds them all)."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
