"""Task families: what ``metalearn.fit`` samples episodes from.

The protocol a family of your own implements is two members (see :mod:`metalearn.tasks.task`)::

    class MyFamily:
        kind = "regression"                      # or "classification" / "generation"

        def sample(self, split: str, rng: numpy.random.Generator) -> Task:
            ...                                  # split is "train", "val" or "test"
            return Task(support={...}, query={...}, kind=self.kind)

Rules of the road: the columns of ``support``/``query`` follow ``Task.kind`` (regression: ``x``, ``y``
float tensors ``(n, d)``; classification: ``text`` + ``label`` in ``0..N-1``; generation: ``prompt`` +
``completion``); everything random comes from ``rng`` so an episode is reproducible; and the
three meta-splits never share a class or task (which classes or tasks go where is fixed by a seed given
when the family is built). Check a family with :func:`check_family`; ``examples/custom_family.py``
is a runnable one.

Built-in families: :class:`NWayKShot` (N-way K-shot text classification), :class:`FullLabel` (every class
with K shots from the official train split, the whole official test split as queries), :class:`Verbalized` (the
same as prompt -> label word), :class:`InstructionFamily` (data sets x prompt templates),
:class:`Sinusoid`, :class:`TextRules` and :class:`Substitution` (procedural, no data), and :func:`mix` (a
:class:`Mixture`: each episode from one of several families, as in Meta-Dataset). :func:`load` builds one from a
declarative spec: ``load("clinc150", n_way=10)``; :func:`available` lists the built-in specs.
"""
from .classification import NWayKShot
from .folds import support_folds
from .full_label import FullLabel
from .instruction import DEFAULT_TEMPLATES, InstructionFamily
from .mixture import Mixture, check_target, mix
from .procedural import RULES, Sinusoid, TextRules
from .sources import data_dir
from .specs import available, load
from .substitution import Substitution
from .task import KINDS, SPLITS, Task, TaskFamily, check_family
from .verbalizer import Verbalized

__all__ = [
    "DEFAULT_TEMPLATES",
    "FullLabel",
    "InstructionFamily",
    "KINDS",
    "Mixture",
    "NWayKShot",
    "RULES",
    "SPLITS",
    "Sinusoid",
    "Substitution",
    "Task",
    "TaskFamily",
    "TextRules",
    "Verbalized",
    "available",
    "check_family",
    "check_target",
    "data_dir",
    "load",
    "mix",
    "support_folds",
]
