"""One run per output folder: ``fit`` holds ``output_dir/metalearn.lock`` while it trains.

The lock is an ``flock`` (see ``files.locked``): a second run into the same folder is refused with
the holder's pid and host, and a run that crashed (even by SIGKILL) leaves no stale lock, because the
kernel releases it with the process; its lock file, if left behind, is simply taken over.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from . import files

FILE = "metalearn.lock"


class FolderInUse(files.Locked):
    """Another live run holds the output folder."""


@contextlib.contextmanager
def hold(output_dir: Optional[str]) -> Iterator[None]:
    """Hold ``output_dir`` for one run (no-op for ``None``); a folder this created and left empty is removed."""
    if output_dir is None:
        yield
        return
    created = not os.path.exists(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE)
    lock = contextlib.ExitStack()
    try:
        try:
            lock.enter_context(files.locked(path, blocking=False))
        except files.Locked:
            who = files.holder(path)
            name = (f"pid {who['pid']} on {who.get('host', '?')} (since {who.get('since', '?')})" if "pid" in who
                    else "another process")
            raise FolderInUse(f"output_dir={output_dir!r} is in use by a live run: {name} holds {path}. Two runs "
                              "in one folder would overwrite each other's log, checkpoints and learner; wait for it "
                              "to finish or give this run another output_dir") from None
        with lock:
            yield
    finally:
        if created and os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)
