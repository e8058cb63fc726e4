"""Declarative family specs (YAML) and ``load(name_or_path, **overrides)``.

A spec names a ``family`` kind, a ``source`` and the constructor settings of that family::

    family: classification          # classification | full_label | verbalizer | instruction | sinusoid | text_rules
                                    # | substitution | mixture
    source: {reader: clinc150}      # or {files: data/*.csv, format: csv} or {hub: clinc_oos, name: plus}
    columns: {text: text, label: intent}
    n_way: 5
    k_shot: 1
    q_query: 5
    splits: [0.5, 0.2, 0.3]

Every other key goes to the family's constructor, and ``load(name, **overrides)`` replaces top-level
keys (``load("clinc150", n_way=10, seed=1)``). Built-in specs live in the top-level ``tasks/``
folder, shipped as the package ``metalearn.specs``.

A mixture spec lists other specs (each episode comes from one of them, see ``tasks.mixture``)::

    family: mixture
    sources: [clinc150, {spec: hwu64, n_way: 10}]   # spec names or paths, each with optional overrides
    weights: [2, 1]                                 # optional; default uniform
"""
from __future__ import annotations

import importlib.resources
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from . import sources
from .classification import NWayKShot
from .full_label import FullLabel
from .instruction import InstructionFamily
from .mixture import Mixture
from .procedural import Sinusoid, TextRules
from .substitution import Substitution
from .verbalizer import Verbalized

__all__ = ["available", "load", "load_spec"]

SPEC_SUFFIXES = (".yaml", ".yml")
META_KEYS = ("columns", "data_dir", "description", "family", "human_instructions", "name", "source",
             "task_column")


def _spec_dirs() -> list[Path]:
    dirs = []
    try:
        dirs.append(Path(str(importlib.resources.files("metalearn.specs"))))
    except (ModuleNotFoundError, TypeError):
        pass
    dirs.append(Path(__file__).resolve().parents[2] / "tasks")  # a source checkout
    return [d for d in dirs if d.is_dir()]


def available() -> list[str]:
    """Names of the built-in specs."""
    return sorted({p.stem for d in _spec_dirs() for p in d.iterdir() if p.suffix in SPEC_SUFFIXES})


def load_spec(name_or_path: str | os.PathLike) -> tuple[dict, Path | None]:
    """The spec dict of a built-in name or a YAML file, and the file's folder (None for built-ins)."""
    path = Path(name_or_path).expanduser()
    if path.suffix in SPEC_SUFFIXES or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"spec file {path} does not exist; give a YAML file or one of {available()}")
        base: Path | None = path.resolve().parent
    else:
        found = [d / f"{name_or_path}{s}" for d in _spec_dirs() for s in SPEC_SUFFIXES]
        found = [p for p in found if p.is_file()]
        if not found:
            raise ValueError(f"no task spec named {str(name_or_path)!r}; built-ins are {available()}, "
                             "or give the path of a YAML file")
        path, base = found[0], None
    if path.stat().st_size == 0:
        raise ValueError(f"spec file {path} is empty; write a YAML mapping with at least 'family'")
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"spec file {path} must hold a YAML mapping, not {type(spec).__name__}")
    spec.setdefault("name", path.stem)
    return spec, base


def load(name_or_path: str | os.PathLike, **overrides: Any):
    """Build a task family from a built-in spec name or a YAML file.

    Example:
        >>> fam = load("sinusoid", k_shot=10)
        >>> fam.sample("train", __import__("numpy").random.default_rng(0)).support["x"].shape
        torch.Size([10, 1])
    """
    spec, base = load_spec(name_or_path)
    spec.update(overrides)
    return _build(spec, base)


def _build(spec: dict, base: Path | None):
    family = spec.get("family")
    if family not in BUILDERS:
        raise ValueError(f"spec {spec['name']!r}: family {family!r} is unknown; use one of {sorted(BUILDERS)}")
    return BUILDERS[family](spec, base)


# ---------------------------------------------------------------- builders


def _kwargs(spec: Mapping, cls: Callable, extra: tuple[str, ...] = ()) -> dict:
    params = inspect.signature(cls).parameters
    valid = [p for p in params if p not in ("data", "tasks", "base")] + list(extra)
    out = {}
    for key, value in spec.items():
        if key in META_KEYS or key in extra:
            continue
        if key not in params:
            raise ValueError(f"spec {spec['name']!r}: key {key!r} is unknown for family {spec['family']!r}; "
                             f"valid keys: {sorted(valid + list(META_KEYS))}")
        out[key] = tuple(value) if isinstance(value, list) and key in ("n_way", "k_shot", "length") else value
    return out


def _root(spec: Mapping) -> Path | None:
    return Path(spec["data_dir"]).expanduser() if spec.get("data_dir") else None


def _source(spec: Mapping, base: Path | None) -> Any:
    src = spec.get("source")
    if not isinstance(src, Mapping):
        raise ValueError(f"spec {spec['name']!r} needs a 'source' mapping: {{reader: ...}}, {{files: ...}} or "
                         "{hub: ...}")
    src = dict(src)
    if "reader" in src:
        root = _root(spec) or sources.data_dir()
        return sources.read(src.pop("reader"), root, **src.pop("options", {}), **src)
    if "files" in src:
        files = src["files"] if isinstance(src["files"], list) else [src["files"]]
        if base is not None:  # a user's spec: paths relative to the YAML file when they exist there
            files = [str(base / f) if (base / f).exists() else f for f in files]
        root = _root(spec) or (None if all(Path(f).is_absolute() for f in files) else sources.data_dir())
        return sources.load_files(files, src.get("format"), src.get("delimiter"), root)
    if "hub" in src:
        return sources.load_hub(src.pop("hub"), src.pop("name", None), src.pop("split", "train"), **src)
    raise ValueError(f"spec {spec['name']!r}: source {src} needs one of the keys reader, files or hub")


def _classification(spec: Mapping, base: Path | None, extra: tuple[str, ...] = ()) -> NWayKShot:
    cols = spec.get("columns") or {}
    kwargs = _kwargs(spec, NWayKShot, extra)
    return NWayKShot(_source(spec, base), text_column=cols.get("text", "text"),
                     label_column=cols.get("label", "label"), name=spec["name"], **kwargs)


def _full_label(spec: Mapping, base: Path | None) -> FullLabel:
    """A :class:`FullLabel` family; ``columns`` may also name the ``split`` column (default ``official_split``)."""
    cols = spec.get("columns") or {}
    kwargs = _kwargs(spec, FullLabel)
    kwargs.setdefault("name", spec["name"])
    return FullLabel(_source(spec, base), text_column=cols.get("text", "text"), label_column=cols.get("label", "label"),
                     split_column=cols.get("split", "official_split"), **kwargs)


def _verbalizer(spec: Mapping, base: Path | None) -> Verbalized:
    extra = ("templates", "verbalizer", "completion_prefix")
    inner = _classification(spec, base, extra)
    return Verbalized(inner, **{k: spec[k] for k in extra if k in spec})


def _instruction(spec: Mapping, base: Path | None) -> InstructionFamily:
    data = _source(spec, base)
    kwargs = _kwargs(spec, InstructionFamily)
    kwargs.setdefault("name", spec["name"])
    if spec.get("human_instructions"):
        kwargs["instructions"] = sources.instruction_annotations(_root(spec) or sources.data_dir())
    if isinstance(data, Mapping):
        return InstructionFamily(data, **kwargs)
    if spec.get("task_column"):
        return InstructionFamily.from_table(data, spec["task_column"], **kwargs)
    return InstructionFamily({spec["name"]: data}, **kwargs)


def _mixture(spec: Mapping, base: Path | None) -> Mixture:
    """Build every listed spec (with its overrides) and mix them; a source listed twice is refused by name."""
    unknown = sorted(set(spec) - set(META_KEYS) - {"sources", "weights"})
    if unknown:
        raise ValueError(f"spec {spec['name']!r}: key(s) {unknown} are unknown for family 'mixture'; valid keys: "
                         f"{sorted(set(META_KEYS) | {'sources', 'weights'})} (put source settings in its entry)")
    entries = spec.get("sources")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"spec {spec['name']!r}: a mixture needs 'sources', a list of spec names or "
                         "{spec: NAME, <overrides>} entries")
    families: dict[str, Any] = {}
    for entry in entries:
        if isinstance(entry, str):
            ref, settings = entry, {}
        elif isinstance(entry, Mapping) and isinstance(entry.get("spec"), str):
            settings = {k: v for k, v in entry.items() if k != "spec"}
            ref = entry["spec"]
        else:
            raise ValueError(f"spec {spec['name']!r}: source entry {entry!r} is invalid; give a spec name or "
                             "{spec: NAME, <overrides>}")
        if base is not None and (base / ref).is_file():  # a user's spec: paths relative to the YAML file
            ref = str(base / ref)
        child, child_base = load_spec(ref)
        child.update(settings)
        if child["name"] == spec["name"]:
            raise ValueError(f"spec {spec['name']!r} lists itself as a source; list other specs")
        if child["name"] in families:
            raise ValueError(f"spec {spec['name']!r} lists the source {child['name']!r} twice; list each source "
                             "once (give it more weight instead, or another name: {spec: ..., name: ...})")
        families[child["name"]] = _build(child, child_base)
    return Mixture(families, spec.get("weights"), name=spec["name"])


def _procedural(cls: Callable) -> Callable:
    return lambda spec, base: cls(**_kwargs(spec, cls))


BUILDERS: dict[str, Callable[[Mapping, Path | None], Any]] = {
    "classification": _classification,
    "full_label": _full_label,
    "instruction": _instruction,
    "mixture": _mixture,
    "sinusoid": _procedural(Sinusoid),
    "substitution": _procedural(Substitution),
    "text_rules": _procedural(TextRules),
    "verbalizer": _verbalizer,
}
