"""Episodes evaluated in parallel: forked worker processes with one torch thread each.

On CPU a small model's episode is made of small matrix products (an encoder's 5-way 1-shot support set
is about 100 rows), which intra-op threads barely speed up; whole episodes in separate processes scale
with the cores instead. Workers are *forked*, so they inherit the learners, the cached dequantized
weights and the feature caches without pickling anything: only a job's items (episode indices) go out
and its results (plain records) come back, in order. Each episode runs exactly the operations it runs
in one process, so the numbers are the same (tested).

Forking needs the 'fork' start method (Linux, macOS) and a process that has not initialized CUDA (a
forked child cannot use it); ``check_workers`` says so before any work. On a GPU, ``episode_batch``
is the way to adapt many episodes at once.
"""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterator, Sequence

import torch

__all__ = ["check_workers", "forked_map"]

_JOB: Callable[[Any], Any] | None = None
"""The function the forked workers run (set just before the pool forks, so they inherit it)."""


def check_workers(workers: Any) -> None:
    """Raise a clear error for a worker count that cannot run here."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: use a positive number of processes (1: evaluate in this process)")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError(f"workers={workers} needs the 'fork' start method, which this platform lacks; use workers=1")
    if workers > 1 and torch.cuda.is_initialized():
        raise ValueError(f"workers={workers} forks this process, and a forked process cannot use CUDA once it is "
                         "initialized; on a GPU use workers=1 (and episode_batch to adapt episodes together)")


def _one_thread() -> None:
    torch.set_num_threads(1)


def _call(item: Any) -> Any:
    assert _JOB is not None, "forked_map's job is only set inside forked_map"
    return _JOB(item)


def forked_map(job: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``job(item)`` for each item, in order, in ``workers`` forked processes (1: here, lazily).

    ``job`` may be any closure: the workers inherit it through the fork instead of unpickling it. Its
    results must be picklable. An exception in a worker is raised here.
    """
    global _JOB
    if workers <= 1 or len(items) <= 1:
        yield from map(job, items)
        return
    _JOB = job
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(items)), initializer=_one_thread) as pool:
            yield from pool.imap(_call, items)
    finally:
        _JOB = None
