"""Differentiable inner loop: optimizers (init/update pairs), step sizes, and the unroll."""
from .loop import unroll
from .optimizers import AdamState, GradientTransformation, adam, build, chain, clip_by_global_norm, sgd
from .step_sizes import initial_step_sizes, is_lora_b

__all__ = ["AdamState", "GradientTransformation", "adam", "build", "chain", "clip_by_global_norm", "initial_step_sizes",
           "is_lora_b", "sgd", "unroll"]
