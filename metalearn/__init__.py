"""metalearn: meta-learn fast-adapting LoRA / soft-prompt initializations on frozen (4-bit) models.

    learner = metalearn.fit(task_family, model=..., method="maml", inner_steps=3)
    adapted = learner.adapt(task.support, steps=5)
    results = metalearn.evaluate({"maml": learner}, task_family, baselines=["random_init"])
    learner.save("init/");  learner = metalearn.load("init/")

``import metalearn`` is light: torch, transformers and peft load on first use of a name that needs them
(PEP 562 module ``__getattr__``), so ``metalearn --help`` and config validation start at once.
"""
from __future__ import annotations

import logging as _logging
from importlib import import_module as _import_module
from importlib.util import find_spec as _find_spec
from typing import TYPE_CHECKING, Any

from . import quiet
from .config import AdapterConfig, BaseConfig, InnerConfig, OuterConfig, Recipe, RunConfig

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from . import tasks
    from .build import build_learner, load
    from .eval import evaluate, tune_recipe
    from .guarded import AdaptedModel
    from .learner import Learner
    from .training import fit, make_config

_logging.getLogger("metalearn").addHandler(_logging.NullHandler())
quiet.install_log_filters()

_LAZY = {"AdaptedModel": ".guarded", "Learner": ".learner", "build_learner": ".build", "load": ".build",
         "evaluate": ".eval", "fit": ".training", "make_config": ".training", "tune_recipe": ".eval"}

__all__ = ["AdaptedModel", "AdapterConfig", "BaseConfig", "InnerConfig", "Learner", "OuterConfig", "Recipe",
           "RunConfig", "build_learner", "evaluate", "fit", "load", "make_config", "tasks", "tune_recipe"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name's module, or a submodule (``metalearn.tasks``, ``metalearn.eval``), on first use."""
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name], __name__), name)
    elif not name.startswith("_") and _find_spec(f"{__name__}.{name}") is not None:
        value = _import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))  # private helpers (_sys, ...) are underscored
