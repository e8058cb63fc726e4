"""The tiny stand-in base: table codes, train-only pretraining rows, the cache keyed by config and family."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from metalearn.foundation import byte_tokenizer
from metalearn.pretrain import PretrainConfig, _rows, code_alphabet, pretrained_base, table_code
from metalearn.tasks import load

TINY = PretrainConfig(hidden=16, layers=1, heads=2, steps=3, batch=4)


def _decode(code: str, letters: str, reserved: str = "=") -> str:
    codes = code_alphabet(letters, reserved)
    pairs = {letters[codes.index(c) // len(letters)]: letters[codes.index(c) % len(letters)] for c in code}
    return "".join(pairs[x] for x in letters)


def test_a_table_code_names_every_pair_once_in_random_order():
    rng = np.random.default_rng(0)
    codes = {table_code("cafbde", "abcdef", rng, "=") for _ in range(20)}
    assert all(len(c) == 6 and _decode(c, "abcdef") == "cafbde" for c in codes)
    assert len(codes) > 1  # shuffled
    assert not set("".join(codes)) & set("abcdef=\n ")
    with pytest.raises(ValueError, match="needs 100 pair codes"):
        table_code("abcdefghij", "abcdefghij", rng)


def test_pretraining_rows_only_use_train_tables_or_plain_copying():
    family = load("substitution")
    train = {family.table(r) for r in family.rules("train")}
    tok = byte_tokenizer()
    rows = _rows(family, tok, np.random.default_rng(0), 300, codes=True, copy_fraction=0.2, max_length=128)
    seen, copies = set(), 0
    for ids, labels in rows:
        text = tok.decode(ids, skip_special_tokens=False)
        code, rest = text.split(tok.bos_token)
        table = _decode(code, family.alphabet)
        prompt, completion = rest.split("=")
        assert completion.rstrip(tok.eos_token) == "".join(table[family.alphabet.index(c)] for c in prompt) + "\n"
        assert all(lab == -100 for lab in labels[:len(ids) - 6])  # the loss is on the completion (+ EOS) only
        if table == family.alphabet:
            copies += 1
        else:
            assert table in train  # never a val or test table
            seen.add(table)
    assert 30 < copies < 100 and len(seen) > 100  # about 20% copying; many tables per batch


def test_the_base_is_cached_by_config_and_family(tmp_path):
    family = load("substitution")
    path, info = pretrained_base(family, TINY, cache_dir=str(tmp_path))
    assert not info["cached"] and info["table_codes"] and len(info["losses"]) == 3
    assert {"config.json", "model.safetensors", "pretrain.json"} <= set(os.listdir(path))
    again, info2 = pretrained_base(family, TINY, cache_dir=str(tmp_path))
    assert again == path and info2["cached"] and info2["losses"] == info["losses"]
    with open(os.path.join(path, "pretrain.json")) as f:
        assert json.load(f)["config"]["hidden"] == 16
    other_seed, _ = pretrained_base(family, PretrainConfig(**{**TINY.__dict__, "seed": 1}), cache_dir=str(tmp_path))
    other_family, _ = pretrained_base(load("substitution", seed=1), TINY, cache_dir=str(tmp_path))
    assert len({path, other_seed, other_family}) == 3
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".pretrain-")]  # no temporary folder left behind
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(path).config.hidden_size == 16


@pytest.mark.parametrize("kwargs, match", [({"hidden": 0}, "hidden=0"), ({"hidden": 30, "heads": 4}, "not divisible"),
                                           ({"lr": 0.0}, "lr=0.0"), ({"copy_fraction": 1.0}, "copy_fraction")])
def test_bad_configs_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**kwargs)


def test_a_classification_family_is_refused_before_training(tmp_path):
    from tests.helpers import IntentFamily

    with pytest.raises(ValueError, match="needs a generation family"):
        pretrained_base(IntentFamily(), TINY, cache_dir=str(tmp_path))
    assert not os.listdir(tmp_path)
