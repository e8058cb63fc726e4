"""The saved-learner folder on disk: where it goes, publishing it whole, reading it back whole and verified.

``Learner.save`` writes a complete folder beside the target and ``publish`` swaps it in under an
exclusive lock; ``read`` takes every file it needs into memory under a shared lock. So several
processes may save and load the same folder at once: a load sees one complete save, never a mix or a
gap, and no ``.old`` folder is left behind. The lock is a hidden ``.<name>.lock`` beside the folder,
removed by its last holder. A path that is a symlink is followed: saving updates the link's target.

The sidecar ``metalearn.json`` records a SHA-256 of every file a load reads; ``read`` verifies them,
so flipped or truncated bytes fail with an error naming the file instead of loading other values.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import torch

from . import files

log = logging.getLogger("metalearn")

CONFIG_FILE = "metalearn.json"
STATE_FILE = "metalearn_state.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = 2  # 2: checksums in the sidecar
PROMPT_SUBFOLDER = "prompt"  # a soft prompt saved beside LoRA
PREFIX_SUBFOLDER = "prefix"  # a prefix saved beside LoRA
# LoRA or a lone soft prompt/prefix at the root; a soft prompt/prefix beside LoRA in its subfolder
ADAPTER_FOLDERS = ("", f"{PROMPT_SUBFOLDER}/", f"{PREFIX_SUBFOLDER}/")
KNOWN = (STATE_FILE,) + tuple(f"{sub}{name}" for sub in ADAPTER_FOLDERS for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))


def _lock_path(real: str) -> str:
    parent, name = os.path.split(real)
    return os.path.join(parent, f".{name}.lock")


def target(path: str) -> str:
    """The real folder a save to ``path`` writes (symlinks followed); refuse what must not be replaced."""
    real = os.path.realpath(path)
    if os.path.isfile(real):
        raise ValueError(f"cannot save the learner to {path!r}: it is a file; give a folder path")
    if _foreign(real):
        raise ValueError(f"cannot save the learner to {path!r}: the folder holds other files and no {CONFIG_FILE}, "
                         "and saving replaces the whole folder; give a new or empty folder, or a saved learner's")
    os.makedirs(os.path.dirname(real), exist_ok=True)
    return real


def _foreign(real: str) -> bool:
    """A non-empty folder without a sidecar: not a saved learner.

    Listed under the shared lock: a concurrent save renames the folder aside and deletes it under its exclusive
    lock, and a listing that opened the folder just before could read a half-deleted learner with its sidecar
    already gone (seen in CI: a save refused as "other files and no metalearn.json")."""
    if not os.path.isdir(os.path.dirname(real)):
        return False  # no parent: nothing there to guard (and no place for a lock file)
    with files.locked(_lock_path(real), shared=True, optional=True):
        try:
            entries = os.listdir(real)
        except (FileNotFoundError, NotADirectoryError):  # none there: nothing to guard
            return False
    return bool(entries) and CONFIG_FILE not in entries


def checksums(folder: str) -> dict[str, str]:
    """SHA-256 of every file a load reads (``*.safetensors`` and ``*.json`` but the sidecar), by relative path."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != CONFIG_FILE and name.endswith((".safetensors", ".json")):
                with open(os.path.join(root, name), "rb") as f:
                    out[rel] = files.sha256(f.read())
    return dict(sorted(out.items()))


def publish(tmp: str, real: str) -> None:
    """Swap the complete folder ``tmp`` in at ``real`` (from ``target``), excluding concurrent loads."""
    files.match_folder_mode(tmp)
    parent, name = os.path.split(real)
    with files.locked(_lock_path(real)):
        for entry in os.listdir(parent):  # .old folders exist only under this lock: these are a crash's leftovers
            if entry.startswith(f".{name}.old-"):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        files.replace_dir(tmp, real)


@dataclass
class Folder:
    """A saved learner read into memory: its sidecar and the bytes of the files a load needs."""

    path: str
    meta: dict
    blobs: dict[str, bytes]  # relative path -> bytes

    def has(self, rel: str) -> bool:
        return rel in self.blobs

    def tensors(self, rel: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        if rel not in self.blobs:
            raise ValueError(f"{os.path.join(self.path, rel)!r} is missing: the saved learner is partial or was "
                             "edited; re-save it, or restore the folder from a complete copy")
        try:
            return load(self.blobs[rel])
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{os.path.join(self.path, rel)!r} cannot be read ({err}); re-save the learner") from None


def read(path: str) -> Folder:
    """Read and verify a saved learner folder; every problem is a ValueError naming the file and the fix."""
    real = os.path.realpath(path)
    if not os.path.isdir(os.path.dirname(real)):
        raise FileNotFoundError(f"no saved learner at {path!r}: the folder does not exist")
    # the checks below run under the lock: a concurrent save swaps the folder out and back in under its
    # exclusive lock, and checked outside it the path could be missing for that instant
    with files.locked(_lock_path(real), shared=True, optional=True):
        if not os.path.exists(real):
            raise FileNotFoundError(f"no saved learner at {path!r}: the folder does not exist")
        if not os.path.isdir(real):
            hint = (f"; pass its folder {os.path.dirname(path) or '.'!r}" if os.path.basename(path) == CONFIG_FILE
                    else "; pass the folder that Learner.save wrote (it holds metalearn.json)")
            raise ValueError(f"{path!r} is a file, not a saved learner folder{hint}")
        raw = _read_bytes(real, CONFIG_FILE)
        if raw is None:
            raise ValueError(f"{path!r} is not a saved metalearn learner: {CONFIG_FILE} is missing (save with "
                             "Learner.save, or load a bare peft adapter with peft.PeftModel.from_pretrained)")
        meta = _parse_sidecar(os.path.join(path, CONFIG_FILE), raw)
        wanted = set(KNOWN) | set(meta.get("checksums") or {})
        blobs = {rel: data for rel in sorted(wanted) if (data := _read_bytes(real, rel)) is not None}
    _verify(path, meta, blobs)
    return Folder(path, meta, blobs)


def _read_bytes(folder: str, rel: str) -> Optional[bytes]:
    try:
        with open(os.path.join(folder, rel), "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _parse_sidecar(meta_path: str, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{meta_path} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}): the file "
                         "is damaged; re-save the learner, or restore metalearn.json from a good copy") from None
    try:
        meta = json.loads(text)
        if not isinstance(meta, dict) or not isinstance(meta["config"], dict):
            raise TypeError("not a mapping with a 'config' mapping")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_path} is corrupted ({err}); re-save the learner") from None
    sums = meta.get("checksums")
    if sums is not None and not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())):
        raise ValueError(f"{meta_path}: 'checksums' must map file names to SHA-256 hex digests; re-save the learner")
    return meta


def _verify(path: str, meta: dict, blobs: dict[str, bytes]) -> None:
    """Every file the sidecar lists is there with its recorded SHA-256; an adapter config has its weights."""
    sums = meta.get("checksums")
    if sums is None:
        log.warning("%s was saved without checksums (an older metalearn): its files cannot be verified", path)
    for rel, digest in (sums or {}).items():
        if rel not in blobs:
            raise ValueError(f"{os.path.join(path, rel)!r} is missing: the saved learner is partial; re-save it, or "
                             "restore the folder from a complete copy")
        if files.sha256(blobs[rel]) != digest:
            raise ValueError(f"{os.path.join(path, rel)!r} does not match the SHA-256 recorded in {CONFIG_FILE} when it "
                             "was saved: the file is damaged or was changed. Re-save the learner, or restore the "
                             "folder from a good copy")
    for prefix in ADAPTER_FOLDERS:
        if prefix + ADAPTER_CONFIG in blobs and prefix + ADAPTER_WEIGHTS not in blobs:
            raise ValueError(f"{os.path.join(path, prefix + ADAPTER_WEIGHTS)!r} is missing beside its "
                             f"{ADAPTER_CONFIG}: the saved learner is partial; re-save it")
