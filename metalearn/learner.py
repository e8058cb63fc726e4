"""The Learner: a meta-learned initialization and everything needed to adapt it to a task.

It holds the frozen base (shared, never copied), the peft adapters, the initialization ``init``
(the meta-learned tensors) and the inner-loop step sizes. ``adapt`` runs the inner loop on a
support set; ``save`` writes a standard peft adapter folder plus what peft cannot hold.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Union

import torch
from torch.func import vmap

from . import adapters as adapters_mod
from . import card, files, quiet, saved
from .attention_masks import vmappable_masks
from .config import Recipe, RunConfig
from .functional import feature_loss, outputs, prototype_head, prototypes, task_loss
from .guarded import AdaptedModel, guard_decision, recipe_settings, whole_support_head
from .inner import build as build_optimizer
from .inner import initial_step_sizes, unroll
from .inner.batched import unroll_batched
from .model import TaskModel, eval_mode
from .saved import CONFIG_FILE, STATE_FILE
from .tasks.task import Task
from .types import Batch, Params

log = logging.getLogger("metalearn")



@dataclass
class Episode:
    """A task's support and query sets encoded for the model (tokenized once, reused every step)."""

    support: Batch
    query: Batch
    kind: str
    n_way: int
    task_id: str = ""


class Learner:
    """A meta-learned initialization on a frozen base model."""

    def __init__(self, model: TaskModel, adapted: adapters_mod.Adapted, config: RunConfig):
        self.model = model
        self.adapted = adapted
        self.config = config
        dtype = next(iter(adapters_mod.adaptable_params(adapted).values())).dtype if adapted.names else torch.float32
        self.init: Params = {n: p.detach().clone().requires_grad_(True)
                             for n, p in adapters_mod.adaptable_params(adapted).items()}
        inner = config.inner
        self.step_sizes: Params = initial_step_sizes(list(self.init) + self._head_names(), inner.lr,
                                                     inner.lora_plus_ratio, inner.steps, inner.per_step, dtype)
        if config.adapter.head == "learned":
            hidden = self._hidden_size()
            self.init["head.weight"] = torch.zeros(config.adapter.n_way, hidden, dtype=dtype, requires_grad=True)
            self.init["head.bias"] = torch.zeros(config.adapter.n_way, dtype=dtype, requires_grad=True)
        if inner.learn_step_sizes:
            for t in self.step_sizes.values():
                t.requires_grad_(True)
        self.optimizer = build_optimizer(inner.optimizer, inner.clip_norm, inner.adam_betas, inner.adam_eps)
        self.history: list[dict] = []  # fit's log records, one per meta-step
        self.family: Optional[str] = None  # the task family fit meta-trained on, described for the model card
        self.recipe: Optional[Recipe] = None  # adapt()'s defaults, chosen on validation tasks (eval.tune_recipe)

    # ---- what the outer loop optimizes ----------------------------------------------------------
    def meta_parameters(self) -> Params:
        """Every tensor the outer loop learns: the init, plus step sizes for Meta-SGD (prefixed 'lr:')."""
        out = dict(self.init)
        if self.config.inner.learn_step_sizes:
            out.update({"lr:" + n: t for n, t in self.step_sizes.items()})
        return out

    def _head_names(self) -> list[str]:
        return ["head.weight", "head.bias"] if self.config.adapter.head in ("learned", "prototype") else []

    def _hidden_size(self) -> int:
        cfg = getattr(self.adapted.module, "config", None)
        return int(getattr(cfg, "hidden_size"))

    # ---- task -> episode -> adapted params ------------------------------------------------------
    def episode(self, task: Task) -> Episode:
        if self.config.adapter.head is None and task.kind == "classification":
            raise ValueError(f"task {task.task_id!r} is a classification task but adapter.head is None; set "
                             "adapter.head='prototype' (any N) or 'learned' (fixed N)")
        if self.config.adapter.head == "learned" and task.n_way != self.config.adapter.n_way:
            raise ValueError(f"task {task.task_id!r} has {task.n_way} classes but the learned head has "
                             f"{self.config.adapter.n_way}; use adapter.head='prototype' for varying N")
        return Episode(self.model.encode(task.support, task.kind), self.model.encode(task.query, task.kind),
                       task.kind, task.n_way, task.task_id)

    def loss(self, params: Params, batch: Batch, kind: str) -> torch.Tensor:
        return task_loss(self.model, params, batch, kind)

    def support_loss(self, params: Params, batch: Batch, kind: str) -> torch.Tensor:
        """The inner loop's loss: ``loss``, with a cosine head at ``inner.support_temperature`` when set.

        In a 1-shot episode each support example is its own prototype, so at the head's low temperature
        (e.g. 0.05) the support loss is ~0 and the inner loop has no gradient; a higher temperature here
        (the query loss and predictions keep the head's own) gives it one.
        """
        return task_loss(self.model, params, batch, kind, self.config.inner.support_temperature)

    def start_params(self, episode: Episode, init: Optional[Params] = None) -> Params:
        """The parameters a task starts from: the init, plus a prototype head when asked for.

        The head is computed from the init, but the inner loop must see it as an independent tensor:
        the adapted tensors are clones of the init, so an inner gradient is a partial derivative (head
        held fixed) while the meta-gradient still flows through the prototypes into the init.
        """
        init = self.init if init is None else init
        if episode.kind != "classification" or self.config.adapter.head != "prototype":
            return dict(init)
        params = {n: t.clone() for n, t in init.items()}
        params.update(prototype_head(self.model, init, episode.support, episode.n_way))
        return params

    def inner_adapt(self, episode: Episode, steps: Optional[int] = None, order: Optional[str] = None,
                    init: Optional[Params] = None, on_loss=None, on_step=None,
                    meta_gradient: bool = True) -> tuple[Params, list[float]]:
        """Run the inner loop on the episode's support set (differentiable unless order='first').

        ``meta_gradient=False`` (adaptation only, first order): nothing links the result to the init,
        which lets a prototype head share its support forward with the first step (``_detached_start``).
        """
        inner = self.config.inner
        first: list[torch.Tensor] = []
        if meta_gradient:
            params = self.start_params(episode, init)
        else:
            if (order or inner.order) != "first":
                raise ValueError(f"meta_gradient=False adapts without a meta-gradient, so order must be 'first', "
                                 f"not {order or inner.order!r}")
            params, first = self._detached_start(episode, self.init if init is None else init)
        steps = inner.steps if steps is None else steps

        def loss_fn(p: Params) -> torch.Tensor:
            return first.pop() if first else self.support_loss(p, episode.support, episode.kind)

        fast, losses = unroll(loss_fn, params, self._schedule(self.step_sizes, steps), self.optimizer, steps,
                              order or inner.order, inner.truncate, inner.checkpoint, self.trainable_names(params),
                              on_loss, on_step)
        return fast, [float(loss) for loss in losses]

    def _detached_start(self, episode: Episode, init: Params) -> tuple[Params, list[torch.Tensor]]:
        """``start_params`` cut from the init, and the first support loss where its forward can be shared.

        A prototype head comes from the support features at the init: the features the first inner
        step computes again. Without a meta-gradient one forward serves both (the same operations on
        the same tensors, so the same numbers), saving one of the 1 + 2k passes of a k-step loop.
        """
        params = {n: t.detach().requires_grad_(True) for n, t in init.items()}
        if episode.kind != "classification" or self.config.adapter.head != "prototype":
            return params, []
        support = episode.support
        feats = outputs(self.model, params, support)
        head = prototypes(self.model, feats.detach(), support["label"], episode.n_way)
        params.update({n: t.requires_grad_(True) for n, t in head.items()})
        return params, [feature_loss(self.model, params, feats, support["label"], self.config.inner.support_temperature)]

    def trainable_names(self, params: Params) -> Optional[list[str]]:
        """The tensors the inner loop adapts (ANIL's ``inner.trainable`` substrings), None for all of them."""
        patterns = self.config.inner.trainable
        if not patterns:
            return None
        unmatched = [s for s in patterns if not any(s in n for n in params)]
        if unmatched:
            raise ValueError(f"inner.trainable entries {unmatched} match no adaptable tensor; the names are "
                             f"{_name_sample(params)}: use substrings of them, e.g. 'head' (a classification head) "
                             "or 'prompt_encoder' (the soft prompt), 'lora_B' (LoRA)")
        return [n for n in params if any(s in n for s in patterns)]

    def check(self, episode: Episode) -> None:
        """Raise, before any training, on what only the model can tell: ANIL names that match nothing, or
        outputs whose shape differs from the targets' (one forward; with autograd on, as in training)."""
        with torch.enable_grad():
            params = self.start_params(episode)
            self.trainable_names(params)
            self.loss(params, episode.query, episode.kind)

    def batched_loss(self, params: Params, batch: Batch, kind: str, support: bool = False) -> torch.Tensor:
        """The (tasks,) losses of task-stacked ``params`` (tasks, ...) on a task-stacked batch: one ``vmap``.

        ``support=True``: the inner loop's loss (``support_loss``) instead of the query loss.
        """
        loss = self.support_loss if support else self.loss
        with vmappable_masks(), quiet.ignoring(quiet.VMAP_SDPA_CPU):
            return vmap(lambda p, b: loss(p, b, kind), randomness="different")(params, batch)

    def inner_adapt_batched(self, support: Batch, kind: str, n_way: int, init: Params,
                            step_sizes: Optional[Params] = None, steps: Optional[int] = None,
                            order: Optional[str] = None, on_step=None) -> tuple[Params, list[torch.Tensor]]:
        """``inner_adapt`` for many tasks at once (``inner.batched``): support (tasks, rows, ...), init (tasks, ...).

        ``step_sizes`` default to the learner's (shared); per-task ones have shape (tasks, steps). Returns
        the fast parameters (tasks, ...) and each step's (tasks,) support losses.
        """
        inner = self.config.inner
        steps = inner.steps if steps is None else steps

        def start(params: Params, batch: Batch) -> Params:  # e.g. a prototype head from each support set
            return self.start_params(Episode(batch, batch, kind, n_way), params)

        with vmappable_masks(), quiet.ignoring(quiet.VMAP_SDPA_CPU):
            params = vmap(start, randomness="different")(init, support)
        sizes = self._schedule(self.step_sizes if step_sizes is None else step_sizes, steps)
        return unroll_batched(lambda p: self.batched_loss(p, support, kind, support=True), params, sizes, self.optimizer, steps,
                              order or inner.order, inner.truncate, inner.checkpoint, self.trainable_names(params),
                              on_step)

    def _schedule(self, step_sizes: Params, steps: int) -> Params:
        """Step sizes for ``steps`` steps: a per-step schedule shorter than that keeps its last size."""
        inner = self.config.inner
        if steps <= inner.steps or not inner.per_step:
            return step_sizes
        return {n: torch.cat([t, t[-1:].expand(steps - inner.steps)]) if t.dim() == 1 else t
                for n, t in step_sizes.items()}

    # ---- views and adaptation without a meta-gradient --------------------------------------------
    def scaled(self, scale: float) -> "Learner":
        """A shallow view with a detached init and step sizes times ``scale`` (this learner is untouched)."""
        view = copy.copy(self)
        view.init = {n: t.detach().requires_grad_(True) for n, t in self.init.items()}
        view.step_sizes = {n: t.detach() * scale for n, t in self.step_sizes.items()}
        return view

    def adapt_params(self, episode: Episode, steps: Optional[int] = None,
                     scale: float = 1.0) -> tuple[Params, list[float]]:
        """First-order inner loop from the init on ``episode.support``, step sizes times ``scale``; detached."""
        with torch.enable_grad():
            fast, losses = self.scaled(scale).inner_adapt(episode, steps=steps, order="first", meta_gradient=False)
        return {n: t.detach() for n, t in fast.items()}, losses

    @contextlib.contextmanager
    def frozen(self) -> Iterator[TaskModel]:
        """A TaskModel over the base with the soft prompt or prefix and LoRA switched off (nothing copied)."""
        adapted, model = self.adapted, self.model
        module = adapted.soft.base_model if adapted.soft is not None else adapted.module
        frozen = TaskModel(module, model.model_type, model.tokenizer, 0, model.max_length,
                           getattr(model, "head_metric", "euclidean"), getattr(model, "head_temperature", 0.05))
        with adapted.lora.disable_adapter() if adapted.lora is not None else contextlib.nullcontext():
            yield frozen

    def foundation_head(self, task: Task) -> Params:
        """The learner's prototype head on the frozen foundation's features of ``task.support`` (no adapters)."""
        with torch.no_grad(), self.frozen() as frozen:
            support = frozen.encode(task.support, "classification")
            return prototypes(frozen, frozen.features(support), support["label"], task.n_way)

    # ---- public -----------------------------------------------------------------------------------
    def adapt(self, support: Union[Task, Mapping[str, Any]], steps: Optional[int] = None,
              kind: Optional[str] = None, *, scale: Optional[float] = None,
              guard: Union[bool, str, Mapping[str, Any], None] = None) -> AdaptedModel:
        """Adapt the meta-learned initialization to one task's support set; return the adapted model.

        Defaults come from ``self.recipe`` when one was chosen (``metalearn.eval.tune_recipe``, saved with the
        learner): its step count and step-size ``scale``; else ``inner.steps`` steps at the meta-trained sizes.
        ``guard`` (classification): ``True`` decides from the support set's own folds whether adapting beats
        the frozen foundation (``guarded.decide``; needs K >= 2 per class), ``False`` always adapts, ``"meta"`` or
        ``"foundation"`` applies a verdict made elsewhere, and so does one of ``eval.guard.decide_gated``'s
        choices (a verdict pooled over many tasks of one target, with its held-out scores). The
        default is the recipe's guard, on for classification at K >= 2. With ``recipe.reuse_fold`` a task the
        guard adapts keeps its first fold's adaptation (the prototypes from all K shots) instead of adapting
        again on the whole support set. ``adapted.decision`` says which way it went and why. The model runs in
        eval mode (no dropout) throughout, whatever mode it was left in.
        """
        task = support if isinstance(support, Task) else Task(support, support, kind or self._default_kind(),
                                                              task_id="user")
        settings = recipe_settings(self, steps, scale)
        steps, scale = settings["steps"], settings["scale"]
        folds: dict[int, tuple[Params, list[float]]] = {}
        reuse = self.recipe is not None and self.recipe.reuse_fold
        with eval_mode(self.model):
            decision = guard_decision(self, task, guard, steps, scale,
                                      on_fold=(lambda j, p, losses: folds.setdefault(j, (p, losses))) if reuse else None)
            if decision["use"] == "foundation":
                return AdaptedModel(self, self.foundation_head(task), task.kind, [], use="foundation",
                                    decision=decision)
            if 0 in folds:  # Recipe.reuse_fold: the first fold's adaptation, its head on the whole support set
                fast, losses = whole_support_head(self, folds[0][0], task), folds[0][1]
                decision = {**decision, "why": decision["why"] + "; kept the first fold's adaptation (K-1 shots per "
                                                                 "class), its prototypes from all K"}
            else:
                fast, losses = self.adapt_params(self.episode(task), steps, scale)
        return AdaptedModel(self, fast, task.kind, losses, decision=decision)

    def write_params(self, params: Params) -> None:
        """Load ``params`` into the shared peft modules, which then compute with them (decoding, exports)."""
        adapters_mod.write_params(self.adapted, params)

    def _default_kind(self) -> str:
        return {"module": "regression", "encoder": "classification"}.get(self.model.model_type, "generation")

    def save(self, path: str, results: Any = None) -> None:
        """Write the init as peft adapter folder(s) (LoRA at the root, a soft prompt or prefix beside it) and a sidecar.

        Written to a temporary folder beside ``path`` and swapped into place under a lock, so a crash never
        leaves a half-written adapter where a good one was, and concurrent loads see one whole save (see
        ``metalearn.saved``). A symlink is followed: its target is updated. ``README.md`` is a model card
        (``metalearn.card``), written after the checksums, so it may be edited; pass ``results``
        (``evaluate``'s result, or the folder it was saved to) to add its table, and its files in ``eval/``.
        """
        from safetensors.torch import save_file

        path = saved.target(path)
        tmp = files.new_temp_dir(path)
        try:
            adapters_mod.write_params(self.adapted, self.init)
            adapters_mod.save_adapters(self.adapted, tmp)
            extra = {"lr:" + n: t for n, t in self.step_sizes.items()}
            sidecar = set(self.adapted.sidecar_names())
            extra.update({n: t for n, t in self.init.items() if n.startswith("head.") or n in sidecar})
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, os.path.join(tmp, STATE_FILE))
            meta = {"config": self.config.to_dict(), "model_type": self.model.model_type,
                    "names": list(self.adapted.names), "format": saved.FORMAT, "checksums": saved.checksums(tmp)}
            if self.recipe is not None:
                meta["recipe"] = self.recipe.to_dict()
            with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, default=str)
            card.write(self._card_data(), tmp, results)  # after the checksums: the card and eval/ are not verified on load
            saved.publish(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _card_data(self) -> card.CardData:
        peft_model = self.adapted.lora if self.adapted.lora is not None else self.adapted.prompt
        recorded = peft_model.peft_config["default"].base_model_name_or_path if peft_model is not None else None
        return card.CardData(self.config, self.model.model_type, lora=self.adapted.lora is not None,
                             prompt=self.adapted.prompt is not None, recorded_base=recorded, family=self.family,
                             history=list(self.history))

    def push_to_hub(self, repo_id: str, *, results: Any = None, private: Optional[bool] = None,
                    token: Optional[str] = None, commit_message: str = "Upload meta-learned initialization") -> str:
        """Save to a temporary folder and upload it as the Hub model repo ``repo_id``; return the commit URL.

        The repo is created if needed (``huggingface_hub.HfApi.create_repo``), then the folder uploaded
        (``upload_folder``): the peft adapter, metalearn's files and the model card.
        """
        from . import hub

        hub.check_push(repo_id)  # a valid name and a reachable Hub, before anything is written
        with tempfile.TemporaryDirectory() as tmp:
            folder = os.path.join(tmp, "learner")
            self.save(folder, results=results)
            return hub.push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


def _name_sample(params: Params) -> str:
    names = list(params)
    return repr(names[:6])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > 6 else "]")

