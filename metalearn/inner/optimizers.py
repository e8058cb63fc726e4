"""Differentiable inner optimizers as pure ``init``/``update`` pairs (optax's GradientTransformation).

``update(grads, state, params) -> (directions, state)`` returns the direction to step along; the
inner loop multiplies it by the step size of each tensor (a constant, a LoRA+ multiple, or a
learned Meta-SGD tensor), so step sizes stay data and never hide in a closure. Everything here is
plain tensor arithmetic, so it stays differentiable when the caller builds a graph.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from ..types import Grads, Params
from .numerics import safe_norm, safe_sqrt


class GradientTransformation(NamedTuple):
    init: Callable[[Params], Any]
    update: Callable[[Grads, Any, Params], tuple[Grads, Any]]


class EmptyState(NamedTuple):
    pass


class AdamState(NamedTuple):
    count: int
    mu: Grads
    nu: Grads


def sgd() -> GradientTransformation:
    """Plain gradient descent: the direction is the gradient."""
    return GradientTransformation(lambda params: EmptyState(), lambda grads, state, params: (dict(grads), state))


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 1e-16) -> GradientTransformation:
    """Adam's bias-corrected direction m / (sqrt(v) + eps), with ``eps_root`` so zero gradients give no NaN."""

    def init(params: Params) -> AdamState:
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        return AdamState(0, zeros, dict(zeros))

    def update(grads: Grads, state: AdamState, params: Params):
        count = state.count + 1
        mu = {k: b1 * state.mu[k] + (1 - b1) * g for k, g in grads.items()}
        nu = {k: b2 * state.nu[k] + (1 - b2) * g * g for k, g in grads.items()}
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count
        directions = {k: (mu[k] / c1) / (safe_sqrt(nu[k] / c2, eps_root) + eps) for k in grads}
        return directions, AdamState(count, mu, nu)

    return GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all gradients down together when their global norm exceeds ``max_norm``."""

    def update(grads: Grads, state, params: Params):
        norm = safe_norm(grads.values())
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        return {k: g * scale for k, g in grads.items()}, state

    return GradientTransformation(lambda params: EmptyState(), update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in order (e.g. clip, then Adam)."""

    def init(params: Params):
        return tuple(t.init(params) for t in transforms)

    def update(grads: Grads, state, params: Params):
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update)


def build(name: str, clip_norm: float | None = None, betas=(0.9, 0.999), eps: float = 1e-8) -> GradientTransformation:
    """The inner optimizer an ``InnerConfig`` names."""
    base = adam(betas[0], betas[1], eps) if name == "adam" else sgd()
    return chain(clip_by_global_norm(clip_norm), base) if clip_norm else base
