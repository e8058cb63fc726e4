"""Evaluation: adapt-then-score on held-out tasks, baselines, metrics with 95% intervals, tables and plots.

    results = metalearn.evaluate({"maml": learner, "multitask": mt}, family,
                                 baselines=["random_init"], steps=[0, 1, 5, 10], shots=[5, 10])
    print(results.table());  results.save("runs/eval")
"""
from . import baselines, guard, metrics, report
from .baselines import BASELINES
from .evaluate import DEFAULT_EPISODES, DEFAULT_LR_GRID, DEFAULT_STEPS, evaluate
from .inputs import family_for_shots, sample_tasks
from .recipe import tune_recipe
from .results import EvalResults
from .setfit_baseline import SetFitOptions

__all__ = ["BASELINES", "DEFAULT_EPISODES", "DEFAULT_LR_GRID", "DEFAULT_STEPS", "EvalResults", "SetFitOptions", "baselines",
           "evaluate", "family_for_shots", "guard", "metrics", "report", "sample_tasks", "tune_recipe"]
