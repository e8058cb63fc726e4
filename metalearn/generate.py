"""Greedy decoding with adapted parameters, through transformers' own ``generate``.

The adapted tensors are written into the shared peft module first (the module's adapter
parameters are scratch space: the Learner keeps its init separately), then decoding runs with
KV caching as usual. Prompts are encoded exactly as in training (BOS + prompt, left padded).
"""
from __future__ import annotations

import torch

from .adapters import Adapted, write_params
from .model import TaskModel
from .quiet import PEFT_POSITION_IDS, ignoring
from .types import Params


def greedy(model: TaskModel, adapted: Adapted, params: Params, prompts: list[str],
           max_new_tokens: int = 32) -> list[str]:
    """Greedy completions of ``prompts`` under ``params`` (no sampling: reproducible)."""
    tok = model.tokenizer
    module = model.module
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
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
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
