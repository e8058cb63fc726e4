"""``metalearn.evaluate``: adapt every method on the same held-out episodes, score it, compare it fairly.

The protocol, top to bottom:

1. Check every input (method names, steps, shots, baselines against the model type, the test split)
   and raise a ``ValueError`` naming the fix before anything is adapted.
2. For each shot count K, sample the test tasks **once** from ``numpy.random.default_rng(seed)``;
   every method runs on that one list (a paired comparison), and the val tasks likewise.
3. For every adapting method (each Learner, ``random_init``) and each step count, pick the inner
   learning rate on the **meta-validation** split: a small grid of multipliers of the method's own step
   sizes, scored on ``val_episodes`` val tasks by the metric that is reported (accuracy for
   classification, MSE for regression; NLL for generation, which is not decoded here), ties broken by the
   loss, then by the multiplier closest to 1. Test tasks never influence it.
4. Adapt on the support set only (the query set is not even encoded into the episode that adaptation
   sees), then score on the query set (``score.py``). Non-adapting baselines score once per episode.
5. Time: wall seconds per episode of each method's adaptation and scoring (``EvalResults.seconds``).
6. Summarize: mean and 95% interval ``mean ± t·std/√n`` (sample std, Student t: 1.96 at 600 episodes) per
   method, shot count, step count and metric, and paired differences against a reference method with their own interval.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence, Union

from ..learner import Learner
from ..progress import bar as progress_bar
from ..views import evaluation_mode, random_init
from . import baselines as bl
from . import metrics
from .inputs import FamilyOrFactory, check_inputs, sample_tasks, shots_label
from .results import EvalResults, paired_differences, summarize
from .runner import Run
from .setfit_baseline import SetFitOptions

__all__ = ["DEFAULT_EPISODES", "DEFAULT_LR_GRID", "DEFAULT_STEPS", "evaluate"]

log = logging.getLogger("metalearn")

DEFAULT_STEPS = (0, 1, 2, 5, 10)
DEFAULT_LR_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
"""Multipliers of each method's own inner step sizes (``config.inner.lr``, or Meta-SGD's learned ones)."""
DEFAULT_EPISODES = {"classification": 600, "regression": 600, "generation": 100}
"""600 test episodes is the few-shot classification convention; greedy decoding makes generation costlier."""
INTERVAL = "95% CI: mean ± t·std/sqrt(n), sample std (ddof=1), Student t with n-1 df (1.96 at n = 600)"


def evaluate(methods: Union[Mapping[str, Learner], Learner, None], family: FamilyOrFactory, *,
             baselines: Optional[Sequence[str]] = (), steps: Sequence[int] = DEFAULT_STEPS,
             shots: Optional[Sequence[int]] = None, episodes: Optional[int] = None, base: Optional[Learner] = None,
             reference: Optional[str] = None, seed: int = 0, lr_grid: Optional[Sequence[float]] = DEFAULT_LR_GRID,
             val_episodes: int = 32, generate: bool = True, max_new_tokens: Optional[int] = None,
             output_dir: Optional[str] = None, progress: bool = True, reuse: bool = True,
             episode_batch: int = 1, workers: int = 1, setfit: Optional[SetFitOptions] = None) -> EvalResults:
    """Adapt each method on each held-out task's support set and score it on the query set.

    Args:
        methods: ``{name: Learner}`` (meta-learned inits, a multi-task init, ...), or one Learner.
        family: a task family, or a factory ``k_shot -> family`` (used when ``shots`` is given).
        baselines: any of ``"zero_shot"``, ``"in_context"``, ``"prototypes"``, ``"linear_probe"``,
            ``"random_init"`` (see ``metalearn.eval.baselines``); they use ``base``'s frozen model (None or ``()``: none).
        steps: inner-step counts to score after (0 scores the init itself).
        shots: K values; the family is rebuilt per K (``family_for_shots``). None: the family's own K.
        episodes: test episodes per shot count (default 600; 100 for generation).
        base: the Learner whose frozen model the baselines use (default: the first method).
        reference: the method paired differences are taken against (default ``"random_init"`` if run).
        seed: seeds the test tasks (``seed``), the val tasks (``seed + 1``) and ``random_init``.
        lr_grid: multipliers of each method's inner step sizes tried on the val split (None: no search);
            chosen per step count by the reported metric (accuracy, MSE; NLL for generation).
        val_episodes: val tasks per shot count for the search.
        generate: greedy-decode generation tasks (exact match, ROUGE, BLEU); off: NLL (and label accuracy) only.
        max_new_tokens: decoding budget; default from the support completions (never the query).
        output_dir: when given, results JSON/CSV, a markdown table and PNG plots are written there.
        reuse: do no work twice (the default): one adaptation trajectory per step size serves every step
            count, a prototype head's support forward serves the first inner step, and frozen features are
            encoded once per text (``eval.features``); the same numbers up to rounding. False recomputes all.
        episode_batch: test and val episodes adapted together in one batched computation (``vmap``);
            pays on accelerators; 1 adapts one episode at a time.
        workers: processes that adapt and score the test episodes in parallel, forked from this one (they
            inherit the models and caches) with one torch thread each; the same numbers as ``workers=1``.
            On CPU, small models gain far more from this than from intra-op threads.
        setfit: the ``"setfit"`` baseline's training options (default: SetFit's own defaults).

    Example:
        >>> results = metalearn.evaluate({"maml": learner}, metalearn.tasks.load("sinusoid"),
        ...                              baselines=["random_init"], steps=[0, 1, 5], episodes=100)
        >>> print(results.table())
    """
    learners, baselines, steps, families, n_test, base = check_inputs(
        methods, family, baselines, steps, shots, episodes, base, reference, lr_grid, val_episodes, output_dir, reuse,
        episode_batch, workers)
    _check_setfit(baselines, base, setfit)
    shots_list = list(families)
    kind = families[shots_list[0]].kind
    n_test = n_test or DEFAULT_EPISODES[kind]
    tune = bool(lr_grid) and any(s > 0 for s in steps)
    # every task is sampled before anything is adapted: a broken split fails here, and every method gets the same list
    tests = {k: sample_tasks(families[k], "test", n_test, seed) for k in shots_list}
    vals = {k: sample_tasks(families[k], "val", val_episodes, seed + 1) if tune else [] for k in shots_list}
    labels = {k: shots_label(k, tests[k]) for k in shots_list}
    adapting = dict(learners)
    if "random_init" in baselines:
        adapting["random_init"] = random_init(base, seed)
    frozen_names = [b for b in baselines if b not in bl.ADAPTING]
    names = list(adapting) + frozen_names
    if reference is None and "random_init" in adapting and len(names) > 1:
        reference = "random_init"

    records, tuning = [], []  # tuning: one row per method, shot count and tuned step count
    total = len(shots_list) * n_test * (len(adapting) * len(steps) + len(frozen_names))
    bar = progress_bar(total=total, desc="evaluate", disable=not progress)
    run = Run(steps, tune, lr_grid, generate, max_new_tokens, reuse, episode_batch, bar, workers=workers,
              setfit=setfit, seed=seed)
    with evaluation_mode(list(adapting.values()) + [base]):
        for k in shots_list:
            for name, learner in adapting.items():
                records += run.adapting(name, learner, labels[k], vals[k], tests[k], tuning)
            records += run.frozen(frozen_names, base, labels[k], tests[k])
    bar.close()
    settings = _settings(names, baselines, steps, [labels[k] for k in shots_list], n_test, val_episodes if tune else 0,
                         list(lr_grid) if tune else None, seed, reference, kind, base, families[shots_list[0]],
                         generate, list(adapting), setfit)
    results = EvalResults(records, summarize(records), paired_differences(records, reference), tuning, settings,
                          {n: list(lr.history) for n, lr in learners.items() if lr.history}, run.timing)
    if output_dir is not None:
        results.save(output_dir)
    return results


def _check_setfit(baselines: Sequence[str], base: Learner, setfit: Optional[SetFitOptions]) -> None:
    """Before any work: SetFit needs the encoder's folder or Hub id, and options of the right type."""
    if "setfit" in baselines:
        bl.encoder_source(base)  # a learner built in memory has no folder SetFit can load
    if setfit is not None and not isinstance(setfit, SetFitOptions):
        raise ValueError(f"setfit={setfit!r} is invalid: pass metalearn.eval.SetFitOptions(...) or None")


def _settings(names, baselines, steps, shots, episodes, val_episodes, lr_grid, seed, reference, kind, base, family,
              generate, adapting, setfit) -> dict:
    """What the results record about how they were made (saved beside them in results.json)."""
    return {"methods": names, "baselines": list(baselines), "steps": list(steps), "shots": shots, "episodes": episodes,
            "val_episodes": val_episodes, "lr_grid": lr_grid, "seed": seed, "reference": reference, "kind": kind,
            "model_type": base.model.model_type, "family": repr(family), "generate": generate,
            "primary_metric": metrics.PRIMARY[kind], "adapting": adapting, "interval": INTERVAL,
            "setfit": (setfit or SetFitOptions()).to_dict() if "setfit" in baselines else None}
