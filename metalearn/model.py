"""TaskModel: turns a task's examples into tensors and tensors into outputs, for one model type.

One object knows the tokenizer, the model type and the soft-prompt length, so the rest of the
library only sees ``encode(examples) -> Batch`` and ``forward(batch)``:

* causal / seq2seq (generation tasks): forward returns the mean next-token NLL over completion
  tokens only (prompt tokens are masked with -100).
* encoder (classification tasks): forward returns mean-pooled features (batch, hidden); the head
  lives in the parameter dict, see ``functional.task_loss``.
* plain module (regression): forward returns the module's output for ``x``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .types import IGNORE, Batch


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and every submodule in eval mode (no dropout) while open; each one's own mode put back after.

    Models come out of ``from_pretrained`` + peft, and out of meta-training, in training mode (dropout 0.1 in
    BERT-style encoders): adapting and predicting for a user must not draw dropout masks.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class TaskModel(nn.Module):
    def __init__(self, module: nn.Module, model_type: str, tokenizer=None, n_virtual_tokens: int = 0,
                 max_length: int = 128, head_metric: str = "euclidean", head_temperature: float = 0.05):
        super().__init__()
        self.head_metric = head_metric  # how classification logits compare features with the head
        self.head_temperature = head_temperature
        self.module = module
        self.model_type = model_type
        self.tokenizer = tokenizer
        self.n_virtual_tokens = n_virtual_tokens
        self.max_length = max_length

    # ---- examples -> tensors -------------------------------------------------------------------
    def encode(self, examples: Mapping[str, Any], kind: str) -> Batch:
        """Column dict of one support/query set → model-ready tensors."""
        device = self.device
        if kind == "regression":
            return {"x": torch.as_tensor(examples["x"]).to(device), "y": torch.as_tensor(examples["y"]).to(device)}
        if kind == "classification":
            if self.model_type in ("causal", "seq2seq") and "prompt" in examples:
                raise ValueError("classification with a causal LM goes through a verbalizer: use a generation task")
            enc = self.tokenizer(list(examples["text"]), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
                    "label": torch.as_tensor(examples["label"]).long().to(device)}
        if kind == "generation":
            return self.encode_generation(list(examples["prompt"]), list(examples["completion"]))
        raise ValueError(f"unknown task kind {kind!r}")

    def encode_generation(self, prompts: list[str], completions: list[str]) -> Batch:
        """Prompt+completion token ids, with labels masking the prompt (SFT on completions only)."""
        tok = self.tokenizer
        if self.model_type == "seq2seq":
            enc = tok(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            lab = tok(completions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, IGNORE)
            return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device),
                    "labels": labels.to(self.device)}
        rows, labels = [], []
        for prompt, completion in zip(prompts, completions):
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            if tok.bos_token_id is not None:
                p = [tok.bos_token_id] + p
            ids = (p + c)[-self.max_length:]
            lab = ([IGNORE] * len(p) + c)[-self.max_length:]
            rows.append(ids)
            labels.append(lab)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        label_ids = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, labels)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            label_ids[i, : len(lab)] = torch.tensor(lab)
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device),
                "labels": label_ids.to(self.device)}

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    # ---- tensors -> outputs ----------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        if self.model_type == "module":
            return self.module(batch["x"])
        if self.model_type == "encoder":
            return self.features(batch)
        return self.sequence_nll(batch).mean()

    def features(self, batch: Batch) -> torch.Tensor:
        """Mean-pooled last hidden states over real tokens: (batch, hidden)."""
        out = self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state[:, self.n_virtual_tokens:]  # drop the soft prompt positions
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def sequence_nll(self, batch: Batch) -> torch.Tensor:
        """Per-sequence mean NLL of the completion tokens: (batch,)."""
        labels = batch["labels"]
        if self.model_type == "seq2seq":
            logits = self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=labels).logits
            targets = labels
        else:
            logits = self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits[:, self.n_virtual_tokens:][:, :-1]  # (batch, seq-1, vocab)
            targets = labels[:, 1:]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # a half-precision softmax over the vocabulary loses too much
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE,
                                          reduction="none")  # (batch, seq-1)
        counts = (targets != IGNORE).sum(1).clamp_min(1)
        return nll.sum(1) / counts
