"""metalearn: meta-learn fast-adapting LoRA / soft-prompt initializations on frozen (4-bit) models.

    learner = metalearn.fit(task_family, model=..., method="maml", inner_steps=3)
    adapted = learner.adapt(task.support, steps=5)
    results = metalearn.evaluate({"maml": learner}, task_family, baselines=["random_init"])
    learner.save("init/");  learner = metalearn.load("init/")
"""
import logging

from . import quiet, tasks
from .build import build_learner, load
from .config import AdapterConfig, BaseConfig, InnerConfig, OuterConfig, RunConfig
from .eval import evaluate
from .fit import fit, make_config
from .learner import AdaptedModel, Learner

logging.getLogger("metalearn").addHandler(logging.NullHandler())
quiet.install_log_filters()

__all__ = sorted(["AdaptedModel", "AdapterConfig", "BaseConfig", "InnerConfig", "Learner", "OuterConfig",
                  "RunConfig", "build_learner", "evaluate", "fit", "load", "make_config", "tasks"])
__version__ = "0.1.0"
