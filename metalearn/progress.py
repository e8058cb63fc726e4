"""Progress bars that stay readable wherever they are read.

On a terminal or in a notebook, tqdm draws its live bar as usual. When stderr is a file or a pipe
(``2> log``, ``nohup``, CI), a live bar would become one long line of ``\\r``-joined redraws; there the bar
prints a plain line instead, at most every ``FILE_INTERVAL_S`` seconds and once at the end.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator, Optional

__all__ = ["FILE_INTERVAL_S", "bar", "library_bars_only_when_live"]

FILE_INTERVAL_S = 30.0


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
        initial: int = 0, disable: bool = False):
    """A tqdm bar over ``iterable`` (or to ``update`` by hand) on stderr, in the style stderr can show."""
    from tqdm.auto import tqdm
    from tqdm.std import tqdm as console

    if disable or _live():
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable)
    return console(iterable, total=total, desc=desc, initial=initial, file=_Lines(sys.stderr), ascii=True,
                   mininterval=FILE_INTERVAL_S, maxinterval=FILE_INTERVAL_S)


@contextlib.contextmanager
def library_bars_only_when_live() -> Iterator[None]:
    """Within the block, transformers' own bars ("Loading weights", ...) are off unless stderr is live."""
    if _live():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _live() -> bool:
    """Whether stderr shows a live bar: a terminal, or a notebook (whose stderr is no terminal)."""
    from tqdm.autonotebook import tqdm as frontend
    from tqdm.std import tqdm as console

    return frontend is not console or bool(getattr(sys.stderr, "isatty", lambda: False)())


class _Lines:
    """A file for tqdm that turns each carriage-return redraw into one plain line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()  # tqdm pads a redraw with spaces to erase the previous one
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()
