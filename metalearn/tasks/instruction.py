"""Prompt/completion families made from (data set x templates), FLAN / promptsource style.

Each task is a table of input/output rows (one Instruction Induction task, one data set). An episode
picks a task of its meta-split, one of that task's templates, and K support + Q query rows, and renders
each row as ``prompt = template.format(**row)``, ``completion = completion.format(**row)``. Templates
are the generic ones below plus, where the data has them, human-written instructions
(``instructions={task: [...]}``) placed into ``instruction_template``. Meta-splits are disjoint by
task (``split_by="task"``), or, for a single-task source such as DialogSum, by example
(``split_by="example"``: every task's rows are partitioned between the splits).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .splits import as_range, assign_splits, check_split, columns_of, draw, template_fields
from .task import SPLITS, Task

__all__ = ["DEFAULT_TEMPLATES", "INSTRUCTION_TEMPLATE", "InstructionFamily"]

DEFAULT_TEMPLATES = ("Input: {input}\nOutput:", "{input} ->", "Q: {input}\nA:")
INSTRUCTION_TEMPLATE = "{instruction}\n\nInput: {input}\nOutput:"


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class InstructionFamily:
    """Generation tasks from named tables and prompt templates.

    Args:
        tasks: ``{task name: data}``, data a ``datasets.Dataset``, a dict of columns or a list of rows.
        templates: prompt templates (``str.format`` over the row's columns) used for every task.
        instructions: optional ``{task: [human instruction, ...]}``; each becomes one more template
            of that task via ``instruction_template`` (which must contain ``{instruction}``).
        completion: template of the completion, by default ``" {output}"``.
        k_shot: support rows per episode, int or inclusive range; q_query: query rows.
        splits: fractions ``(train, val, test)`` or explicit task lists (``split_by="task"`` only).
        split_by: ``"task"`` (default) or ``"example"``.
        seed: fixes the split assignment. name: used in task ids and messages.
    """

    kind = "generation"

    def __init__(self, tasks: Mapping[str, Any], *, templates: Sequence[str] = DEFAULT_TEMPLATES,
                 instructions: Mapping[str, Sequence[str]] | None = None,
                 instruction_template: str = INSTRUCTION_TEMPLATE, completion: str = " {output}",
                 k_shot: int | Sequence[int] = 4, q_query: int = 4, splits: Any = (0.6, 0.2, 0.2),
                 split_by: str = "task", seed: int = 0, name: str = "instructions") -> None:
        self.name, self.seed, self.completion = name, seed, completion
        self.k_shot, self.q_query = k_shot, int(q_query)
        self._shots = as_range(k_shot, "k_shot")
        if self.q_query < 1:
            raise ValueError(f"q_query={q_query} is invalid; sample at least one query row")
        if not tasks:
            raise ValueError(f"{name}: no tasks given; pass {{task name: data}} with at least one task")
        if split_by not in ("task", "example"):
            raise ValueError(f"split_by={split_by!r} is invalid; use 'task' or 'example'")
        if isinstance(templates, str) or not templates:
            raise ValueError(f"templates={templates!r} is invalid; give a non-empty list of template strings")
        if instructions and "{instruction}" not in instruction_template:
            raise ValueError(f"instruction_template {instruction_template!r} lacks the field {{instruction}}")
        self._templates = {
            t: list(templates) + [instruction_template.replace("{instruction}", _escape(a))
                                  for a in (instructions or {}).get(t, [])]
            for t in tasks
        }
        self._data = {t: self._read(t, data) for t, data in tasks.items()}
        self._split_by = split_by
        if split_by == "task":
            parts = assign_splits(list(tasks), splits, seed, what="task")
            self._rows = {s: {t: np.arange(self._len(t)) for t in parts[s]} for s in SPLITS}
        else:
            self._rows = self._example_splits(splits, seed)
        self._validate()

    def _read(self, task: str, data: Any) -> dict[str, list]:
        fields = {"completion": template_fields(self.completion)}
        fields.update({t: template_fields(t) for t in self._templates[task]})
        available = list(getattr(data, "column_names", None) or (data[0] if isinstance(data, list) and data else data))
        for template, names in fields.items():
            for f in names:
                if f not in available:
                    what = (f"completion template {self.completion!r}" if template == "completion"
                            else f"template {template!r}")
                    raise ValueError(
                        f"{self.name}: {what} names field {f!r}, which task {task!r} does not have; "
                        f"available fields: {available}. Fix the template or rename the column"
                    )
        needed = sorted({f for names in fields.values() for f in names})
        cols = columns_of(data, needed, f"{self.name} task {task!r}")
        if not cols or not next(iter(cols.values())):
            raise ValueError(f"{self.name}: task {task!r} has no rows; drop it or give it data")
        return cols

    def _len(self, task: str) -> int:
        return len(next(iter(self._data[task].values())))

    def _example_splits(self, splits: Any, seed: int) -> dict[str, dict[str, np.ndarray]]:
        if isinstance(splits, Mapping) and not all(isinstance(v, (int, float)) for v in splits.values()):
            raise ValueError("split_by='example' takes split fractions, not explicit lists")
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
        for i, task in enumerate(sorted(self._data)):
            ids = [str(j) for j in range(self._len(task))]
            parts = assign_splits(ids, splits, seed + i, what="example")
            for s in SPLITS:
                out[s][task] = np.sort(np.asarray([int(j) for j in parts[s]], dtype=int))
        return out

    def _validate(self) -> None:
        need = self._shots[1] + self.q_query
        for split in SPLITS:
            if not self._rows[split]:
                raise ValueError(
                    f"{self.name}: split {split!r} has no tasks; change the split fractions or task lists "
                    f"(there are {len(self._data)} tasks)"
                )
            for task, rows in self._rows[split].items():
                if len(rows) < need:
                    raise ValueError(
                        f"{self.name}: task {task!r} has {len(rows)} rows in split {split!r} but k_shot + q_query "
                        f"needs {need}; lower k_shot or q_query, or drop that task"
                    )

    @classmethod
    def from_table(cls, data: Any, task_column: str, **kwargs: Any) -> "InstructionFamily":
        """Build from one table whose ``task_column`` names each row's task."""
        name = kwargs.get("name", "instructions")
        columns = list(getattr(data, "column_names", None) or (data[0] if isinstance(data, list) else data))
        task_of = columns_of(data, [task_column], name)[task_column]
        tasks: dict[str, dict[str, list]] = {}
        all_cols = columns_of(data, columns, name)
        for i, task in enumerate(task_of):
            rows = tasks.setdefault(str(task), {c: [] for c in columns})
            for c in columns:
                rows[c].append(all_cols[c][i])
        return cls(tasks, **kwargs)

    # ---------------------------------------------------------------- what a user looks at

    def tasks(self, split: str) -> list[str]:
        """Task names of meta-split ``split``."""
        check_split(split)
        return sorted(self._rows[split])

    def templates(self, task: str) -> list[str]:
        """The prompt templates of ``task`` (generic ones first, then human instructions)."""
        return list(self._templates[task])

    def __repr__(self) -> str:
        sizes = {s: len(t) for s, t in self._rows.items()}
        return f"InstructionFamily({self.name!r}, k_shot={self.k_shot}, q_query={self.q_query}, tasks={sizes})"

    # ---------------------------------------------------------------- sampling

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        """One episode: a task of ``split``, one of its templates, K support and Q query rows."""
        check_split(split)
        names = sorted(self._rows[split])
        task = names[int(rng.integers(len(names)))]
        templates = self._templates[task]
        t_index = int(rng.integers(len(templates)))
        template = templates[t_index]
        k, q = draw(self._shots, rng), self.q_query
        idx = rng.choice(self._rows[split][task], size=k + q, replace=False)
        cols = self._data[task]

        def render(ids: np.ndarray) -> dict[str, list[str]]:
            rows = [{c: v[int(i)] for c, v in cols.items()} for i in ids]
            return {"prompt": [template.format(**r) for r in rows],
                    "completion": [self.completion.format(**r) for r in rows]}

        return Task(
            support=render(idx[:k]), query=render(idx[k:]), kind=self.kind,
            task_id=f"{self.name}/{split}/{task}", template=template,
            meta={"split": split, "task": task, "template_index": t_index, "k_shot": k, "q_query": q},
        )
