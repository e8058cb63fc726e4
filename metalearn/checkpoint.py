"""Checkpoints of a meta-training run: everything needed to resume bit-for-bit, and nothing that runs code.

A checkpoint holds the meta-parameters (init and step sizes), the meta-optimizer and scheduler
state, the task sampler's RNG state, torch's RNG state, the step and the history. It is one
safetensors file: the tensors as tensors, everything else as JSON in the file's metadata. Reading
it never unpickles anything (a pickled checkpoint can execute arbitrary code when loaded), so a
checkpoint from an untrusted source can at worst be refused. It is written to a temporary file and
renamed into place, so a crash mid-write leaves the last good one.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from . import files

FILE = "checkpoint.safetensors"
LEGACY_FILE = "checkpoint.pt"  # pickled checkpoints of metalearn < 0.2: refused, never unpickled
METADATA_KEY = "metalearn_checkpoint"
FORMAT = 1
_TAGS = ("__tensor__", "__tuple__", "__items__")


def resolve(path: str) -> str:
    """A checkpoint file path from a file or a run folder."""
    if not os.path.isdir(path):
        return path
    if not os.path.exists(os.path.join(path, FILE)) and os.path.exists(os.path.join(path, LEGACY_FILE)):
        return os.path.join(path, LEGACY_FILE)
    return os.path.join(path, FILE)


def save(path: str, *, step: int, meta: dict, optimizer, scheduler, rng: np.random.Generator,
         history: list, config: dict) -> None:
    from safetensors.torch import save as to_bytes

    tensors: dict[str, torch.Tensor] = {}
    state = {
        "format": FORMAT,
        "step": step,
        "meta": {n: _encode(t, tensors, f"meta/{n}") for n, t in meta.items()},
        "optimizer": _encode(optimizer.state_dict(), tensors, "optimizer"),
        "scheduler": _encode(scheduler.state_dict(), tensors, "scheduler"),
        "rng": rng.bit_generator.state,
        "torch_rng": _encode(torch.get_rng_state(), tensors, "torch_rng"),
        "history": history,
        "config": config,
    }
    blob = to_bytes(tensors, metadata={METADATA_KEY: json.dumps(state)})
    files.atomic_write(path, blob, fsync=True)


def load(path: str) -> dict[str, Any]:
    """Read a checkpoint, with a clear error for a missing, damaged or foreign (e.g. pickled) file."""
    from safetensors import safe_open

    path = resolve(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: pass the file or the run folder that holds {FILE}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(metadata[METADATA_KEY])
        state = {k: state[k] for k in ("format", "step", "meta", "optimizer", "scheduler", "rng", "torch_rng",
                                      "history", "config")}
        if state["format"] != FORMAT:
            raise ValueError(f"format {state['format']!r} is not {FORMAT}")
        state = _decode(state, tensors)
    except Exception as err:
        if _is_pickle(path):
            raise ValueError(f"checkpoint {path!r} is a pickle (torch.save) file; metalearn does not unpickle "
                             "checkpoints, because unpickling can run arbitrary code. Resume only from the "
                             f"{FILE} that metalearn writes, or start the run again") from None
        raise ValueError(f"checkpoint {path!r} is damaged or not a metalearn checkpoint ({type(err).__name__}: "
                         f"{err}); resume from an earlier copy or start again") from None
    return state


def _is_pickle(path: str) -> bool:
    """A torch.save zip or a raw pickle, by its first bytes (asked only of a file safetensors cannot read:
    a safetensors file starts with its header length, whose first byte may be anything, 0x80 included)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return magic == b"PK" or magic[:1] == b"\x80"


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


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON-ready data: tensors go to ``tensors`` (referenced by name); tuples and non-string keys are tagged."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not set(obj) & set(_TAGS):
            return {k: _encode(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, key), _encode(v, tensors, f"{key}/{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} at {key!r} into a checkpoint (tensors, numbers, "
                    "strings, lists, tuples and dicts only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj
