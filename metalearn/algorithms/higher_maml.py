"""MAML through the ``higher`` library, for plain ``nn.Module`` models (a cross-check and a familiar path).

higher monkey-patches module classes, which fails on peft and transformers modules (an MRO
TypeError); ``check_higher_model`` refuses those up front with a clear message.
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import write_params
from ..learner import Episode, Learner
from .interface import TaskGradient


def check_higher_model(model: nn.Module) -> None:
    """Raise unless ``model`` is a plain nn.Module that higher can patch."""
    suspects = [type(m).__module__ for m in model.modules()
                if type(m).__module__.split(".")[0] in ("peft", "transformers", "bitsandbytes")]
    if hasattr(model, "peft_config") or hasattr(model, "config") or suspects:
        raise ValueError(f"backend='higher' cannot run on {type(model).__name__}: higher cannot patch peft, "
                         "transformers or bitsandbytes modules (it fails with an MRO TypeError). Use "
                         "backend='functional' (the default), which supports them")


def task_gradient(learner: Learner, episode: Episode, on_loss=None) -> TaskGradient:
    import higher

    inner = learner.config.inner
    module = learner.model.module
    write_params(learner.adapted, learner.init)  # the module's own parameters start at the init
    named = dict(module.named_parameters())
    lr = float(next(iter(learner.step_sizes.values())))
    klass = torch.optim.Adam if inner.optimizer == "adam" else torch.optim.SGD
    opt = klass(module.parameters(), lr=lr)
    second = inner.order == "second"
    support_losses = []
    with higher.innerloop_ctx(module, opt, copy_initial_weights=False, track_higher_grads=second) as (fmodel, diffopt):
        for _ in range(inner.steps):
            loss = nn.functional.mse_loss(fmodel(episode.support["x"]), episode.support["y"])
            diffopt.step(loss)
            support_losses.append(float(loss.detach()))
        query_loss = nn.functional.mse_loss(fmodel(episode.query["x"]), episode.query["y"])
        # first order: higher detaches the fast weights, so FOMAML's gradient is taken at them
        wrt = [named[n] for n in learner.init] if second else list(fmodel.parameters())
        grads = torch.autograd.grad(query_loss, wrt, allow_unused=True)
    return TaskGradient({n: torch.zeros_like(learner.init[n]) if g is None else g
                         for n, g in zip(learner.init, grads)}, float(query_loss.detach()), support_losses)
