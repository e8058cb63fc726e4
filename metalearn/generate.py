"""Greedy decoding with adapted parameters.

The adapted tensors are written into the shared peft module first (the module's adapter
parameters are scratch space: the Learner keeps its init separately). Prompts are encoded exactly
as in training (BOS + prompt; the end of an overlong prompt is kept).

* LoRA or no adapters: transformers' own ``generate`` with KV caching (prompts left padded).
* A soft prompt or a prefix (peft prompt learning): a loop of full forwards through the same peft
  forward as training, rows right padded as in training. peft's generation hooks do not fit the
  transformers versions this library supports: they hand the prefix to the model under the old
  ``past_key_values`` name, which ``generate`` no longer reads (the prefix is silently dropped), and
  they re-insert the soft prompt at every decoding step. Without a cache each new token costs a
  forward over the whole sequence; the completions are the step-by-step argmax of the training forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .adapters import Adapted, write_params
from .model import TaskModel
from .quiet import PEFT_POSITION_IDS, ignoring
from .types import Params


def greedy(model: TaskModel, adapted: Optional[Adapted], params: Params, prompts: list[str],
           max_new_tokens: int = 32) -> list[str]:
    """Greedy completions of ``prompts`` under ``params`` (no sampling: reproducible).

    ``params`` are written into ``adapted``'s adapter tensors first; ``adapted=None`` decodes with the
    values ``model``'s modules already hold (a frozen base, or values written before).
    """
    tok = model.tokenizer
    module = model.module
    if adapted is not None:
        write_params(adapted, params)
    if model.model_type == "seq2seq":
        enc = tok(prompts, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt")
        with torch.no_grad(), ignoring(PEFT_POSITION_IDS):
            out = module.generate(input_ids=enc["input_ids"].to(model.device),
                                  attention_mask=enc["attention_mask"].to(model.device),
                                  max_new_tokens=max_new_tokens, do_sample=False)
        return tok.batch_decode(out, skip_special_tokens=True)
    rows = []
    keep = max(model.max_length - max_new_tokens, 1)  # as in training: the end of a long prompt survives
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        rows.append((([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids)[-keep:])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if is_prompt_learning(module):
        new = greedy_uncached(module, rows, max_new_tokens, model.n_virtual_tokens, pad, tok.eos_token_id)
        return [tok.decode(t, skip_special_tokens=True) for t in new]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):  # left padding, so every row continues at the last position
        input_ids[i, width - len(r):] = torch.tensor(r)
        attention[i, width - len(r):] = 1
    with torch.no_grad(), ignoring(PEFT_POSITION_IDS):  # a soft prompt: peft drops generate's position ids
        out = module.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                              max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                              eos_token_id=tok.eos_token_id)
    new_tokens = out[:, width:]  # decoder-only generate returns prompt + continuation
    return [tok.decode(t, skip_special_tokens=True) for t in new_tokens]


def is_prompt_learning(module: nn.Module) -> bool:
    """Whether ``module`` is a peft model of a prompt-learning method (soft prompt, prefix)."""
    config = getattr(module, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def greedy_uncached(module: nn.Module, rows: list[list[int]], max_new_tokens: int, n_virtual: int, pad: int,
                    eos: int) -> list[list[int]]:
    """New token ids per row: argmax of the forward at each row's last position, until EOS or the budget.

    Rows are right padded (real tokens at the positions training gives them); ``n_virtual`` soft-prompt
    positions precede them in the outputs. Finished rows leave the batch.
    """
    device = next(module.parameters()).device
    seqs = [list(r) for r in rows]
    new: list[list[int]] = [[] for _ in rows]
    active = list(range(len(rows)))
    for _ in range(max_new_tokens):
        if not active:
            break
        width = max(len(seqs[i]) for i in active)
        input_ids = torch.full((len(active), width), pad, dtype=torch.long)  # (active rows, width)
        attention = torch.zeros_like(input_ids)
        for j, i in enumerate(active):
            input_ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
            attention[j, : len(seqs[i])] = 1
        with torch.no_grad():
            logits = module(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        last = torch.tensor([n_virtual + len(seqs[i]) - 1 for i in active], device=logits.device)
        picks = logits[torch.arange(len(active), device=logits.device), last].argmax(-1).tolist()  # (active rows,)
        still = []
        for i, token in zip(active, picks):
            if token != eos:
                seqs[i].append(token)
                new[i].append(token)
                still.append(i)
        active = still
    return new
