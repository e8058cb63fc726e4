"""Experiment tracking: every meta-step's record to TensorBoard, Weights & Biases or MLflow.

As with Hugging Face Trainer's ``report_to``: ``metalearn.fit(family, ..., output_dir="runs/x",
report_to=["tensorboard"])``, then ``tensorboard --logdir runs/x/tensorboard``. Each backend is an optional
extra (``pip install "metalearn[tensorboard]"``, ``[wandb]``, ``[mlflow]``); ``fit`` checks that it is
installed before any model is loaded.

Logged at every meta-step, under Trainer-style names (``METRICS``): the mean query loss, the mean first
support loss, the meta-gradient norm, the meta learning rate, and the validation query loss when
``eval_every`` is set; ``train/skipped`` is 1 on a meta-step skipped for a non-finite value. The run's
config is logged once (TensorBoard: a text summary; W&B: the run config; MLflow: parameters).
Where: TensorBoard in ``output_dir/tensorboard``; W&B under ``output_dir/wandb`` (its own settings,
``WANDB_MODE=offline``, ``WANDB_PROJECT``, apply; project "metalearn" by default); MLflow at its tracking
URI (``MLFLOW_TRACKING_URI``), in the active run if there is one.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Optional, Sequence

from .config import RunConfig

__all__ = ["METRICS", "Tracker", "check", "start"]

METRICS = {"query_loss": "train/query_loss", "support_loss_first": "train/support_loss_first",
           "grad_norm": "train/grad_norm", "meta_lr": "train/learning_rate", "val_query_loss": "eval/query_loss"}
TENSORBOARD_SUBDIR = "tensorboard"
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # backend -> module it needs


def check(report_to: Sequence[str], output_dir: Optional[str]) -> None:
    """Raise before any work if a backend is not installed, or TensorBoard has no folder to write to."""
    for name in report_to:
        if importlib.util.find_spec(EXTRA[name]) is None:
            raise ValueError(f"report_to={list(report_to)!r}: {name!r} is not installed; "
                             f"pip install \"metalearn[{name}]\" (or drop {name!r} from report_to)")
    if "tensorboard" in report_to and output_dir is None:
        raise ValueError("report_to=['tensorboard'] needs output_dir: the event files go to "
                         f"output_dir/{TENSORBOARD_SUBDIR}")


def metrics_of(record: dict) -> dict[str, float]:
    """The numbers of one ``fit`` log record under their tracking names."""
    out = {METRICS[k]: float(v) for k, v in record.items() if k in METRICS and v is not None}
    out["train/skipped"] = 1.0 if "skipped" in record else 0.0
    return out


class Tracker:
    """Sends ``fit``'s records to every backend in ``report_to``; ``close`` ends their runs."""

    def __init__(self, backends: list):
        self.backends = backends

    def log(self, record: dict) -> None:
        metrics = metrics_of(record)
        for backend in self.backends:
            backend.log(metrics, int(record["step"]))

    def close(self, failed: bool = False) -> None:
        for backend in self.backends:
            backend.close(failed)
        self.backends = []


def start(report_to: Sequence[str], output_dir: Optional[str], config: RunConfig, first_step: int = 0) -> Tracker:
    """Open a run on each backend; ``first_step`` > 0 continues a resumed run (TensorBoard drops later events)."""
    flat = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
    name = os.path.basename(os.path.normpath(output_dir)) if output_dir else None
    opened = []
    try:
        for backend in report_to:
            opened.append(OPENERS[backend](output_dir, flat, name, first_step))
    except BaseException:
        Tracker(opened).close(failed=True)
        raise
    return Tracker(opened)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _TensorBoard:
    def __init__(self, output_dir: str, config: dict, name: Optional[str], first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(output_dir, TENSORBOARD_SUBDIR),
                                    purge_step=first_step + 1 if first_step else None)
        table = "\n".join(f"    {k} = {v!r}" for k, v in config.items())  # indented: shown as code
        self.writer.add_text("config", table, global_step=first_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, output_dir: Optional[str], config: dict, name: Optional[str], first_step: int):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "metalearn"), name=name, dir=output_dir,
                              config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _MLflow:
    def __init__(self, output_dir: Optional[str], config: dict, name: Optional[str], first_step: int):
        import mlflow

        self.mlflow = mlflow
        self.owned = mlflow.active_run() is None  # log into the caller's active run, and leave it open
        if self.owned:
            mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v) for k, v in config.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self, failed: bool) -> None:
        if self.owned:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


OPENERS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}  # one per name in config.REPORT_TO
