"""A task family of your own in ten lines: random linear-regression tasks.

A family is any object with ``kind`` and ``sample(split, rng) -> Task``. Here every task is a line
``y = w * x + b`` with its own w and b; support and query are points on it. Because the tasks form a
continuum, the meta-splits are separate random streams: the split is mixed into the rng.

    python examples/custom_family.py          # check the family and print one task per split
    python examples/custom_family.py --fit    # also meta-train a tiny model on it with metalearn.fit
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from metalearn.tasks import SPLITS, Task, check_family


class LinearRegression:
    kind = "regression"

    def __init__(self, k_shot: int = 5, q_query: int = 10) -> None:
        self.k_shot, self.q_query = k_shot, q_query

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        rng = np.random.default_rng([int(rng.integers(2**62)), SPLITS.index(split)])  # one stream per split
        w, b = rng.uniform(-2, 2, size=2)
        x = torch.from_numpy(rng.uniform(-5, 5, size=(self.k_shot + self.q_query, 1)).astype(np.float32))
        y = w * x + b
        k = self.k_shot
        return Task(support={"x": x[:k], "y": y[:k]}, query={"x": x[k:], "y": y[k:]}, kind=self.kind,
                    task_id=f"line/{split}/w={w:.2f},b={b:.2f}", meta={"w": float(w), "b": float(b)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="store_true", help="meta-train a small MLP on the family (needs metalearn.fit)")
    parser.add_argument("--steps", type=int, default=200, help="meta-steps for --fit")
    args = parser.parse_args()

    family = LinearRegression()
    check_family(family)  # raises with a clear message if kind or sample is wrong
    rng = np.random.default_rng(0)
    for split in SPLITS:
        task = family.sample(split, rng)
        print(f"{type(family).__name__} {split:5s} {task.task_id}: support x {tuple(task.support['x'].shape)}, "
              f"query x {tuple(task.query['x'].shape)}")

    if args.fit:
        # Any object that follows the protocol goes straight into metalearn.fit, like a built-in family.
        import metalearn

        mlp = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        learner = metalearn.fit(family, model=mlp, meta_steps=args.steps, progress=False)
        first, last = learner.history[0]["query_loss"], learner.history[-1]["query_loss"]
        print(f"meta-trained {args.steps} steps: query loss after adaptation {first:.3f} -> {last:.3f}")

if __name__ == "__main__":
    main()
