"""A stand-in foundation model: a tiny Llama pretrained here on a generation family's train tasks, cached.

No pretrained causal LM is reachable offline, so examples and the demo make one: a Llama built from a
config (byte tokenizer) trained with plain next-token loss on ``prompt -> completion`` pairs of the
family's **train** split only (every token of ``BOS prompt completion EOS``, the recipe the older
examples used). Held-out (val/test) tasks are never seen.

For a family that can name its rule as a table (``family.table(rule_id)``, e.g. ``Substitution``), each
training example is preceded by the table written as a short code, one token per letter pair
(``a->c`` is one character), in random order and in front of BOS: the base learns "apply the table
written before the prompt", as an instruction-following LM applies an instruction. The few-shot tasks
never contain the code: a bare prompt ``"abcd="`` leaves the table unknown, and adapters (a soft prompt
sits exactly where the code sat, in front of BOS) must recover it from the support examples. There the
loss is on the completion only (the prompt letters are random) and each batch row comes from its own table.

The trained model is saved under ``cache_dir/<key>/`` where the key hashes the config, the family and
its train rules, so reruns and tests load it instead of training again (written to a temporary folder
and renamed into place, so an interrupted run leaves nothing half-written behind).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import string
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["PretrainConfig", "code_alphabet", "default_cache_dir", "pretrained_base", "table_accuracy", "table_code"]

VERSION = 2  # bump when the training recipe changes, so old cached bases are not reused
INFO = "pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Size and budget of the tiny base (every field is part of the cache key)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    max_length: int = 128
    seed: int = 0
    table_codes: bool = True  # write the table code in front of each example when the family has tables
    copy_fraction: float = 0.2  # table families: this share of rows uses the identity table (no task's rule)
    warmup: Optional[int] = None  # linear warmup steps before the cosine decay; None: min(100, steps // 10)

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "heads", "steps", "batch", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PretrainConfig.{name}={getattr(self, name)} is invalid; give a positive integer")
        if self.hidden % self.heads:
            raise ValueError(f"PretrainConfig: hidden={self.hidden} is not divisible by heads={self.heads}; "
                             "pick sizes where it is")
        if not 0 <= self.copy_fraction < 1:
            raise ValueError(f"PretrainConfig.copy_fraction={self.copy_fraction} is invalid; give a share in [0, 1)")
        if self.warmup is not None and int(self.warmup) < 1:
            raise ValueError(f"PretrainConfig.warmup={self.warmup} is invalid; give a positive step count or None")
        if not self.lr > 0:
            raise ValueError(f"PretrainConfig.lr={self.lr} is invalid; give a positive learning rate")


def default_cache_dir() -> str:
    """``$METALEARN_CACHE`` or ``~/.cache/metalearn``, plus ``bases``."""
    root = os.environ.get("METALEARN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "metalearn")
    return os.path.join(root, "bases")


def code_alphabet(letters: str, reserved: str = "") -> str:
    """Characters that name letter pairs: printable ASCII minus ``letters``, whitespace and ``reserved``."""
    banned = set(letters) | set(reserved) | set(string.whitespace)
    return "".join(c for c in string.ascii_uppercase + string.digits + string.punctuation if c not in banned)


def table_code(table: str, letters: str, rng: np.random.Generator, reserved: str = "") -> str:
    """``table`` (the images of ``letters`` in order) as one character per pair ``x -> table[x]``, shuffled."""
    codes, n = code_alphabet(letters, reserved), len(letters)
    if n * n > len(codes):
        raise ValueError(f"an alphabet of {n} letters needs {n * n} pair codes, only {len(codes)} exist; use at most "
                         f"{int(math.isqrt(len(codes)))} letters")
    return "".join(codes[n * i + letters.index(table[i])] for i in rng.permutation(n))


def _has_tables(family: Any) -> bool:
    return callable(getattr(family, "table", None)) and isinstance(getattr(family, "alphabet", None), str)


def _code(family: Any, table: str, rng: np.random.Generator) -> str:
    return table_code(table, family.alphabet, rng, getattr(family, "sep", ""))


def _key(family: Any, config: PretrainConfig) -> str:
    rules = family.rules("train") if callable(getattr(family, "rules", None)) else None
    text = json.dumps({"version": VERSION, "config": dataclasses.asdict(config), "family": repr(family),
                       "rules": rules}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain_rows(family: Any, tok, rng: np.random.Generator, n: int, max_length: int) -> list[tuple[list, list]]:
    """``n`` rows of plain causal-LM text from whole train tasks: BOS prompt completion EOS, loss on every token."""
    texts: list[str] = []
    while len(texts) < n:
        task = family.sample("train", rng)
        for part in (task.support, task.query):
            texts += [p + c for p, c in zip(part["prompt"], part["completion"])]
    rows = []
    for text in texts[:n]:
        ids = ([tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:max_length]
        rows.append((ids, list(ids)))
    return rows


def _rows(family: Any, tok, rng: np.random.Generator, n: int, codes: bool, copy_fraction: float,
          max_length: int) -> list[tuple[list, list]]:
    """``n`` (input ids, labels) pairs from train tasks: [code] BOS prompt completion EOS, loss on the completion.

    Without codes (a family without tables): plain causal-LM text, see ``_plain_rows``. With codes, a
    ``copy_fraction`` share of the rows is turned into the identity table (the prompt copied): plain
    copying is learned first, and reading the table from the code builds on it (without these rows a
    small model sits for a long time on the plateau where it predicts every table's average).
    """
    if not codes:
        return _plain_rows(family, tok, rng, n, max_length)
    rows: list[tuple[list, list]] = []
    while len(rows) < n:  # one example per task: many rules in every batch
        task = family.sample("train", rng)
        examples = [(p, c) for part in (task.support, task.query) for p, c in zip(part["prompt"], part["completion"])]
        prompt, completion = examples[int(rng.integers(len(examples)))]
        code = ""
        if codes:  # a train table drawn uniformly (episodes draw a kind first: a few Caesar tables would dominate)
            train = family.rules("train")
            rid = train[int(rng.integers(len(train)))]
            table, completion = family.table(rid), family.apply(rid, prompt[:-len(family.sep)]) + family.terminator
            if rng.random() < copy_fraction:
                table, completion = family.alphabet, prompt[:-len(family.sep)] + family.terminator
            code = _code(family, table, rng)
        p = tok(code, add_special_tokens=False)["input_ids"] + [tok.bos_token_id]
        p += tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(((p + c)[-max_length:], ([-100] * len(p) + c)[-max_length:]))
    return rows


def _train(family: Any, config: PretrainConfig, path: str, progress: bool) -> dict:
    from .foundation import byte_tokenizer, tiny_llama
    from .progress import bar, library_bars_only_when_live

    tok = byte_tokenizer()
    model = tiny_llama(vocab_size=128, hidden_size=config.hidden, layers=config.layers, heads=config.heads,
                       seed=config.seed)
    model.set_attn_implementation("sdpa")  # faster for plain training; the saved config does not keep it
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warmup = config.warmup or min(100, max(config.steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / config.steps, 1.0))))
    rng = np.random.default_rng(config.seed + 7)
    codes = config.table_codes and _has_tables(family)
    losses, start = [], time.time()
    steps = bar(range(config.steps), desc="pretrain base", disable=not progress)
    for step in steps:
        rows = _rows(family, tok, rng, config.batch, codes, config.copy_fraction, config.max_length)
        width = max(len(r) for r, _ in rows)
        x = torch.full((len(rows), width), tok.pad_token_id)  # (batch, seq)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            x[i, :len(ids)], labels[i, :len(ids)], mask[i, :len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss  # mean over labelled tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress:
            steps.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    with library_bars_only_when_live():
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return {"config": dataclasses.asdict(config), "family": repr(family), "table_codes": codes,
            "seconds": time.time() - start, "losses": losses, "params": sum(p.numel() for p in model.parameters())}


def pretrained_base(family: Any, config: PretrainConfig = PretrainConfig(), cache_dir: Optional[str] = None,
                    progress: bool = False) -> tuple[str, dict]:
    """The folder of a tiny Llama pretrained on ``family``'s train tasks, and its record (``cached`` says if reused).

    Trains on the first call for a (config, family) pair; later calls return the cached folder.

    Example:
        >>> path, info = pretrained_base(metalearn.tasks.load("substitution"), PretrainConfig(steps=1000))
        >>> learner = metalearn.fit(family, model_name=path, quantization="nf4", prompt_tokens=6)
    """
    if getattr(family, "kind", None) != "generation":
        raise ValueError(f"pretraining a causal LM needs a generation family, not {getattr(family, 'kind', None)!r}")
    root = cache_dir or default_cache_dir()
    path = os.path.join(root, _key(family, config))
    info_path = os.path.join(path, INFO)
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        return path, dict(info, cached=True)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pretrain-", dir=root)
    try:
        info = _train(family, config, tmp, progress)
        with open(os.path.join(tmp, INFO), "w", encoding="utf-8") as f:
            json.dump(info, f)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same base first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path, dict(info, cached=False)


def table_accuracy(path: str, family: Any, split: str, episodes: int, seed: int = 0, codes: bool = True) -> float:
    """Exact match of the saved base on ``split`` tasks' query examples, with (``codes``) or without the table code.

    With codes it shows what the base can do when told the table; without, what it can do from the bare prompt.
    """
    from transformers import AutoModelForCausalLM

    from .foundation import load_tokenizer

    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rng = np.random.default_rng(seed)
    hits, total = 0, 0
    with torch.no_grad():
        for _ in range(episodes):
            task = family.sample(split, rng)
            for prompt, completion in zip(task.query["prompt"], task.query["completion"]):
                code = _code(family, family.table(task.meta["rule_id"]), rng) if codes else ""
                ids = tok(code, add_special_tokens=False)["input_ids"] + [tok.bos_token_id]
                ids = torch.tensor([ids + tok(prompt, add_special_tokens=False)["input_ids"]])  # (1, seq)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=len(completion) + 1, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id)
                text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                hits += text.split("\n")[0] == completion.split("\n")[0]
                total += 1
    return hits / max(total, 1)
