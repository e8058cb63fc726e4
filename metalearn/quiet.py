"""Silence the few third-party messages a metalearn user cannot act on: each by its exact text, nowhere else.

* peft reads transformers' deprecated ``is_gradient_checkpointing`` property whenever it wraps a model,
  so every ``PeftModel`` prints a ``FutureWarning`` about code that is neither ours nor the user's.
* For prompt tuning, peft drops the position ids that transformers' ``generate`` computes and warns on
  every call ("Position ids are not supported ..."): the soft prompt shifts positions, peft handles it.
* On CPUs with AVX512-BF16, importing bitsandbytes looks for an optional faster kernel from the Hub (the
  ``kernels`` package) and logs a warning that reads like an error when it is absent; bitsandbytes'
  own kernels run instead. Its record goes to metalearn's logger at DEBUG level.

* Under ``torch.func.vmap`` (task batching), torch's CPU flash-attention kernel has no batching rule, so
  SDPA attention runs task by task inside the batched step, and torch warns about "a performance drop"
  with a request to file an issue. The README's speed section says so; the rest of the step is batched.

Warnings are filtered only inside ``ignoring(...)`` blocks around metalearn's own calls into peft (and
around the vmapped loss); the bitsandbytes filter sits on that one bitsandbytes logger, because the
message is logged at import.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

__all__ = ["PEFT_POSITION_IDS", "PEFT_WRAP", "VMAP_SDPA_CPU", "ignoring", "install_log_filters"]

PEFT_WRAP = (r"`is_gradient_checkpointing` is deprecated", FutureWarning)
PEFT_POSITION_IDS = (r"Position ids are not supported for parameter efficient tuning", UserWarning)
VMAP_SDPA_CPU = (r"There is a performance drop because we have not yet implemented the batching rule for "
                 r"aten::_scaled_dot_product_flash_attention_for_cpu", UserWarning)
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"

log = logging.getLogger("metalearn")


@contextlib.contextmanager
def ignoring(*messages: tuple[str, type[Warning]]) -> Iterator[None]:
    """Within the block, ignore warnings whose text starts with one of ``messages`` (regex, category)."""
    with warnings.catch_warnings():
        for text, category in messages:
            warnings.filterwarnings("ignore", message=text, category=category)
        yield


class _Demote(logging.Filter):
    """Drop records whose message starts with ``prefix``; repeat them on metalearn's logger at DEBUG."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.prefix):
            log.debug("bitsandbytes (harmless, its built-in kernels run): %s", record.getMessage())
            return False
        return True


def install_log_filters() -> None:
    """Put the bitsandbytes filter in place (idempotent; bitsandbytes need not be imported yet)."""
    logger = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, _Demote) for f in logger.filters):
        logger.addFilter(_Demote(BNB_KERNELS))
