"""Classification as generation: each class becomes a label word (a verbalizer, Schick & Schütze 2021).

``Verbalized`` wraps an :class:`NWayKShot` family: the episode is sampled the same way, each text is
put into a prompt template, and the completion is the class's label word. The task keeps its
``"label"`` column and ``label_names`` holds the verbalizer words in label order, so a model can be
scored by which of the N words it finds most likely.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .classification import NWayKShot
from .splits import template_fields
from .task import SPLITS, Task

__all__ = ["VERBALIZER_TEMPLATES", "Verbalized"]

VERBALIZER_TEMPLATES = ("Input: {text}\nLabel:", "{text}\nCategory:", "Text: {text}\nThis text is about")


class Verbalized:
    """A generation view of a classification family.

    Args:
        base: the classification family that samples the episodes.
        templates: prompt templates over the field ``{text}``; one is picked per episode.
        verbalizer: ``{class: word}``; by default the class name with ``_`` read as a space.
        completion_prefix: put before the word (``" "`` suits word-piece tokenizers).
    """

    kind = "generation"

    def __init__(self, base: NWayKShot, *, templates: Sequence[str] = VERBALIZER_TEMPLATES,
                 verbalizer: Mapping[str, str] | None = None, completion_prefix: str = " ") -> None:
        if isinstance(templates, str) or not templates:
            raise ValueError(f"templates={templates!r} is invalid; give a non-empty list of template strings")
        for t in templates:
            for f in template_fields(t):
                if f != "text":
                    raise ValueError(
                        f"template {t!r} names field {f!r}, which does not exist; a verbalizer template may "
                        "only use {text}"
                    )
        classes = sorted({c for s in SPLITS for c in base.classes(s)})
        verbalizer = dict(verbalizer or {c: c.replace("_", " ") for c in classes})
        missing = [c for c in classes if c not in verbalizer]
        if missing:
            raise ValueError(f"verbalizer lacks a word for class(es) {missing[:10]}; give one word per class")
        words: dict[str, str] = {}
        for c in classes:
            if words.setdefault(verbalizer[c], c) != c:
                raise ValueError(
                    f"verbalizer maps both {words[verbalizer[c]]!r} and {c!r} to {verbalizer[c]!r}; words must differ"
                )
        self.base, self.templates, self.verbalizer = base, tuple(templates), verbalizer
        self.completion_prefix = completion_prefix

    n_way = property(lambda self: self.base.n_way)
    k_shot = property(lambda self: self.base.k_shot)
    q_query = property(lambda self: self.base.q_query)

    def classes(self, split: str) -> list[str]:
        """The class names of meta-split ``split``."""
        return self.base.classes(split)

    def __repr__(self) -> str:
        return f"Verbalized({self.base!r}, templates={len(self.templates)})"

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """A classification episode of ``base`` rendered as prompt -> label word."""
        task = self.base.sample(split, rng)
        t_index = int(rng.integers(len(self.templates)))
        template = self.templates[t_index]
        words = tuple(self.verbalizer[c] for c in task.label_names)

        def render(part: Mapping) -> dict:
            return {
                "prompt": [template.format(text=t) for t in part["text"]],
                "completion": [self.completion_prefix + words[int(y)] for y in part["label"]],
                "label": part["label"],
            }

        return Task(
            support=render(task.support), query=render(task.query), kind=self.kind,
            task_id=task.task_id, label_names=words, template=template,
            meta={**task.meta, "classes": task.label_names, "template_index": t_index},
        )
