"""Metrics against values worked out by hand, and the 95% interval arithmetic."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalearn.eval import metrics


def test_mean_ci_is_student_t_std_over_sqrt_n():
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0])  # sample std = 1
    assert mean == 2.0
    assert half == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)  # t(0.975, 2) from a printed table


def test_t_quantile_against_printed_table():  # Student's t, two-sided 95%: df 4, 29, 599 -> 2.776, 2.045, 1.964
    assert [round(metrics.t95(n), 3) for n in (5, 30, 600)] == [2.776, 2.045, 1.964]


def test_mean_ci_at_another_confidence_against_printed_table():  # two-sided 99%, df 2: t = 9.925
    assert metrics.mean_ci([1.0, 2.0, 3.0], confidence=0.99)[1] == pytest.approx(9.925 / math.sqrt(3), rel=1e-3)
    for bad in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match=f"confidence={bad!r}"):
            metrics.mean_ci([1.0, 2.0], confidence=bad)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=50))
def test_mean_ci_matches_numpy(values):
    mean, half = metrics.mean_ci(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-9)
    assert half == pytest.approx(metrics.t95(len(values)) * np.std(values, ddof=1) / math.sqrt(len(values)), abs=1e-9)


def test_mean_ci_of_one_value_has_no_width():
    mean, half = metrics.mean_ci([4.0])
    assert mean == 4.0 and math.isnan(half)


def test_paired_ci_cancels_the_shared_episode_variation():
    a = [10.0, 1.0, 5.0, 7.0]
    b = [9.0, 0.0, 4.0, 6.0]  # always exactly 1 lower: unpaired intervals overlap, the paired one is exact
    assert metrics.paired_ci(a, b) == (1.0, 0.0)
    assert metrics.mean_ci(a)[1] > 1.0
    with pytest.raises(ValueError, match="same episodes"):
        metrics.paired_ci([1.0], [1.0, 2.0])


def test_accuracy_and_macro_f1_by_hand():
    true, pred = [0, 0, 1, 1], [0, 1, 1, 1]
    assert metrics.accuracy(pred, true) == 0.75
    # class 0: P = 1, R = 1/2, F1 = 2/3; class 1: P = 2/3, R = 1, F1 = 4/5
    assert metrics.macro_f1(pred, true) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert metrics.macro_f1([2, 2, 2], [0, 1, 2], n_classes=3) == pytest.approx((0 + 0 + 0.5) / 3)


def test_exact_match_ignores_surrounding_whitespace_only():
    assert metrics.exact_match(["abc \n", "x", "Abc"], ["abc", "y", "abc"]) == pytest.approx(1 / 3)


def test_rouge_by_hand():
    scores = metrics.rouge(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["rouge1"] == pytest.approx(5 / 6)  # 5 of 6 unigrams shared (clipped counts)
    assert scores["rouge2"] == pytest.approx(3 / 5)  # the cat, cat sat, sat on
    assert scores["rougeL"] == pytest.approx(5 / 6)  # LCS: the cat sat on mat
    assert metrics.rouge(["a b"], ["a b"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert metrics.rouge(["x y"], ["a b"])["rouge1"] == 0.0


def test_character_rouge_by_hand():
    # one-word outputs: word-level ROUGE-L is all or nothing, the character-level one gives partial credit
    assert metrics.rouge(["acef"], ["acaf"])["rougeL"] == 0.0
    assert metrics.rouge_chars(["acef"], ["acaf"]) == pytest.approx(3 / 4)  # LCS a-c-f of 4 and 4 characters
    p, r = 3 / 5, 3 / 4  # "acbxf" vs "acaf": LCS a-c-f, precision 3/5, recall 3/4
    assert metrics.rouge_chars(["acbxf"], ["acaf"]) == pytest.approx(2 * p * r / (p + r))
    assert metrics.rouge_chars(["ab", "zz"], ["a b", "ab"]) == pytest.approx(0.5)  # whitespace ignored; mean


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=0.01)
    assert metrics.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    assert metrics.bleu(["v w x y z"], ["a b c d e"]) == pytest.approx(0.0)
    assert metrics.bleu(["cba"], ["cba"]) == pytest.approx(100.0)  # effective order: one word can match


def test_mse_and_pairing_checks():
    assert metrics.mse([[1.0], [3.0]], [[0.0], [0.0]]) == 5.0
    with pytest.raises(ValueError, match="one per reference"):
        metrics.exact_match(["a"], ["a", "b"])
