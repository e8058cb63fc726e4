"""A path for bitsandbytes 4-bit linear layers that torch.func can transform (vmap over tasks).

bitsandbytes' ``MatMul4Bit`` is a legacy ``autograd.Function`` (no ``setup_context``), so
``torch.func.vmap`` refuses it; on CPU it happens to slip through a composite kernel, on GPU it
would not. Inside ``transformable_4bit(model)`` every ``Linear4bit`` computes instead

    y = x @ dequantize(W)^T (+ bias)

with bitsandbytes' own numbers (``dequantize_4bit`` then ``F.linear``, exactly as its composite
``gemm_4bit`` kernel and ``MatMul4Bit``'s backward compute them). The weight is frozen, so its
dequantized value is cached for the duration of the context (one meta-step) while the cache holds
less than ``CACHE_BYTES``: then the layer is a plain ``F.linear`` on the cached tensor, which every
torch.func transform and any order of differentiation handle natively, and the graph saves only
references to that one copy. Past the budget (large models) a layer goes through ``Linear4bitFn``,
a modern autograd.Function (``setup_context`` and a ``vmap`` rule) whose backward is itself a 4-bit
matmul, so it has a double backward and, like QLoRA, saves no dequantized weight at all.

One layout for 4-bit bytes. bitsandbytes (>= 0.48) on a CPU with AVX512-BF16 repacks a layer's
bytes *in place* into a CPU-only layout (``quant_state.packing_format_for_cpu``: nibbles reordered,
absmax transposed to bfloat16) the first time the layer runs in eval mode on an input that needs
no gradient. Its own kernel reads that layout; ``dequantize_4bit`` does not, so every other path
would silently compute with scrambled weights, and the packing itself crashes on layers with
``in_features < 64``. metalearn therefore keeps the packing *off* for every layer it holds
(``keep_standard_layout``, called by ``base.load_base`` on every base it loads or is given): one
layout, so bitsandbytes' own forward, ``transformable_4bit`` and the saved checkpoint all compute
with the same weights, on every CPU and on GPU. Bytes that arrive already packed are read back into
the standard layout exactly (the weights the packed kernel computed with), and ``Frozen4bit``
refuses to dequantize packed bytes instead of reading them wrong.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

CACHE_BYTES = 1 << 30
"""Cache dequantized 4-bit weights during a meta-step while their total stays under this many bytes."""


def is_linear4bit(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit linear layer (not peft's LoRA wrapper around one, which shares the class name)."""
    bnb = sys.modules.get("bitsandbytes")  # never imported: no 4-bit layers can exist
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


def is_cpu_packed(module: nn.Module) -> bool:
    """True when bitsandbytes has repacked this layer's bytes into its AVX512-BF16 CPU layout."""
    return bool(getattr(module.weight.quant_state, "packing_format_for_cpu", False))


def keep_standard_layout(model: nn.Module) -> int:
    """Keep bitsandbytes from repacking ``model``'s 4-bit weights; return the number of 4-bit layers.

    Switches off the per-layer AVX512-BF16 repacking (``support_avx512bf16_for_cpu``), and reads any
    layer that is already packed back into the standard layout. Idempotent; a no-op without 4-bit layers.
    """
    layers = [m for m in model.modules() if is_linear4bit(m)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
        if is_cpu_packed(m):
            m.weight.data, m.weight.quant_state = _unpack_cpu_layout(m.weight.data, m.weight.quant_state)
            m.quant_state = m.weight.quant_state
    return len(layers)


def _unpack_cpu_layout(packed: torch.Tensor, state):
    """The standard layout of bytes packed by bitsandbytes for CPU, with exactly the weights they encode.

    bitsandbytes' own inverse restores the nibbles but leaves a plain absmax transposed and re-quantizes
    a nested one; here the absmax is the packed one (bfloat16, the value the packed kernel used),
    untransposed and unnested, so ``dequantize_4bit`` gives the weights the packed kernel computed with.
    """
    import copy

    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    packed_absmax = state.absmax  # (in_features // blocksize, out_features), bfloat16
    state = copy.copy(state)
    state.original_nested = False  # keep the inverse from re-quantizing absmax: set below
    data, state = _convert_weight_packed_for_cpu_inverse(packed, state)
    state.absmax = packed_absmax.t().reshape(-1).float().contiguous()
    state.nested = False
    return data, state


class Frozen4bit:
    """One frozen 4-bit weight: dequantizes it on demand, or once into the cache when there is room."""

    def __init__(self, module: nn.Module, cache: Optional[dict]):
        self.module = module
        self.cache = cache

    def cached(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The dequantized weight from the cache (filling it if it fits the budget), else None."""
        if self.cache is None:
            return None
        key = (id(self.module), dtype)
        if key not in self.cache:
            nbytes = math.prod(self.module.weight.quant_state.shape) * torch.empty((), dtype=dtype).element_size()
            fits = self.cache.get("bytes", 0) + nbytes <= CACHE_BYTES
            self.cache[key] = self.weight(dtype) if fits else None  # None: over budget, never retried
            self.cache["bytes"] = self.cache.get("bytes", 0) + (nbytes if fits else 0)
        return self.cache[key]

    def weight(self, dtype: torch.dtype) -> torch.Tensor:  # (out_features, in_features)
        import bitsandbytes as bnb

        w = self.module.weight
        if is_cpu_packed(self.module):
            raise RuntimeError("a 4-bit layer's bytes were repacked by bitsandbytes into its AVX512-BF16 CPU layout, "
                               "which dequantize_4bit cannot read: load the base through metalearn (or call "
                               "metalearn.quant.keep_standard_layout(model) on it) before running it")
        with torch.no_grad():
            return bnb.functional.dequantize_4bit(w.data, w.quant_state).to(dtype)


class Linear4bitFn(torch.autograd.Function):
    """``x @ W^T`` (or ``x @ W`` when ``transposed``) for a frozen 4-bit ``W``; differentiable to any order."""

    @staticmethod
    def forward(x: torch.Tensor, frozen: Frozen4bit, transposed: bool) -> torch.Tensor:
        w = frozen.weight(x.dtype)
        return F.linear(x, w.t() if transposed else w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.frozen, ctx.transposed = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # d(x W^T)/dx = grad @ W: the same 4-bit product, transposed, and itself differentiable
        return Linear4bitFn.apply(grad, ctx.frozen, not ctx.transposed), None, None

    @staticmethod
    def vmap(info, in_dims, x, frozen, transposed):
        # a linear map acts on the last dimension: a batch dimension anywhere else just rides along
        x_dim = in_dims[0]
        if x_dim is not None and x_dim in (-1, x.dim() - 1):
            x, x_dim = x.movedim(x_dim, 0), 0
        return Linear4bitFn.apply(x, frozen, transposed), x_dim


def linear4bit_forward(module: nn.Module, cache: Optional[dict]):
    """A ``forward`` for one Linear4bit: F.linear on the cached weight, else ``Linear4bitFn`` (bnb's dtype handling)."""
    frozen = Frozen4bit(module, cache)

    def forward(x: torch.Tensor) -> torch.Tensor:
        dtype = getattr(module, "compute_dtype", None) or x.dtype
        weight = frozen.cached(dtype)
        bias = None if module.bias is None else module.bias.to(dtype)
        if weight is not None:  # bitsandbytes' gemm_4bit: F.linear(A, dequantized W, bias), the bias fused (addmm)
            return F.linear(x.to(dtype), weight, bias).to(x.dtype)
        out = Linear4bitFn.apply(x.to(dtype), frozen, False)
        return (out if bias is None else out + bias).to(x.dtype)

    return forward


@contextlib.contextmanager
def transformable_4bit(model: nn.Module, cache: bool = True) -> Iterator[int]:
    """Route every 4-bit linear layer of ``model`` through ``Linear4bitFn`` while the context is open.

    Yields the number of layers rerouted (0 for an unquantized model, where this does nothing). The
    modules themselves are untouched apart from an instance ``forward`` that is removed on exit.

    Example:
        >>> with transformable_4bit(learner.model):
        ...     losses = torch.func.vmap(loss_fn)(stacked_params, stacked_batches)
    """
    layers = [m for m in model.modules() if is_linear4bit(m) and "forward" not in vars(m)]
    store: Optional[dict] = {} if cache else None
    for m in layers:
        m.forward = linear4bit_forward(m, store)
    try:
        yield len(layers)
    finally:
        for m in layers:
            vars(m).pop("forward", None)
        if store is not None:
            store.clear()
