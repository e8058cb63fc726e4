"""Attention masks that ``torch.func.vmap`` can build: transformers' mask code without its shortcuts.

transformers builds every attention mask through one registry (``masking_utils.AttentionMaskInterface``,
one mask function per attention implementation). Before building a mask, the SDPA and eager mask
functions look at the *values* of the padding mask to skip work: "no token is padded, so pass no mask
and let SDPA use ``is_causal``" (causal LMs), or "no padding, so no bias at all" (BERT-family encoders).
Under ``vmap`` those values are per task, and reading them as one Python bool is data-dependent control
flow, which vmap refuses (``vmap: ... data-dependent control flow``).

Inside ``vmappable_masks()`` the SDPA and eager mask functions are called with both shortcuts off, so
the mask is always materialized from tensor operations alone: per task, inside the vmapped function,
with its own padding. The numbers are the same: a materialized all-visible eager mask adds exact zeros;
SDPA with a materialized causal mask computes the same attention as ``is_causal=True``. Only the
registry's instance overrides change (its documented extension point), and only while the context is
open; older transformers without ``masking_utils`` need nothing and get nothing.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

KEYS = ("sdpa", "eager")
"""The attention implementations whose kernels torch.func can transform (flash/flex kernels cannot)."""


def _without_shortcuts(mask_fn: Callable) -> Callable:
    @functools.wraps(mask_fn)
    def mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False
        kwargs["allow_is_bidirectional_skip"] = False
        return mask_fn(*args, **kwargs)

    mask.metalearn_vmappable = True
    return mask


@contextlib.contextmanager
def vmappable_masks() -> Iterator[None]:
    """Build SDPA and eager attention masks without value-dependent shortcuts while the context is open.

    Example:
        >>> with vmappable_masks():
        ...     losses = torch.func.vmap(task_loss)(stacked_params, stacked_batches)  # BERT, SDPA Llama, ...
    """
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS as registry
    except ImportError:  # transformers < 4.53: no mask registry
        yield
        return
    previous = {}
    for key in KEYS:
        if key not in registry or getattr(registry[key], "metalearn_vmappable", False):
            continue  # unknown here, or already inside an enclosing context
        previous[key] = registry._local_mapping.get(key)
        registry[key] = _without_shortcuts(registry[key])
    try:
        yield
    finally:
        for key, fn in previous.items():
            if fn is None:
                del registry[key]
            else:
                registry[key] = fn
