"""Checkpoints of a meta-training run: everything needed to resume bit-for-bit.

A checkpoint holds the meta-parameters (init and step sizes), the meta-optimizer and scheduler
state, the task sampler's RNG state, torch's RNG state, the step and the history. It is written to
a temporary file and renamed into place, so a crash mid-write leaves the last good one.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch

FILE = "checkpoint.pt"


def resolve(path: str) -> str:
    """A checkpoint file path from a file or a run folder."""
    return os.path.join(path, FILE) if os.path.isdir(path) else path


def save(path: str, *, step: int, meta: dict, optimizer, scheduler, rng: np.random.Generator,
         history: list, config: dict) -> None:
    state = {
        "step": step,
        "meta": {n: t.detach().clone() for n, t in meta.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "config": config,
    }
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str) -> dict[str, Any]:
    """Read a checkpoint, with a clear error for a missing or damaged file."""
    path = resolve(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: pass the file or the run folder that holds {FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path!r} is damaged ({type(err).__name__}: {err}); resume from an earlier "
                         "copy or start again") from None


def restore(state: dict, *, meta: dict, optimizer, scheduler, rng: np.random.Generator) -> None:
    """Put a checkpoint's state back into a freshly built run (same config)."""
    missing = set(meta) - set(state["meta"])
    if missing:
        raise ValueError(f"checkpoint does not match this run: it lacks {sorted(missing)[:3]}; resume with the "
                         "same model and adapter settings it was written with")
    with torch.no_grad():
        for name, tensor in meta.items():
            tensor.copy_(state["meta"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
