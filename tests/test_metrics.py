"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from texlens.metrics import (
    MetricSet,
    bleu4,
    edit_distance,
    edit_similarity,
    exact_match,
    exprate,
    image_match,
    image_matches,
    mean_edit_similarity,
)


def t(s: str) -> list[str]:
    return s.split()


def test_edit_similarity_by_hand():
    # "x + 1" -> "x - 1 2": substitute "+" by "-", insert "2": 2 edits over 4 tokens
    assert edit_distance(t("x + 1"), t("x - 1 2")) == 2
    assert edit_similarity(t("x + 1"), t("x - 1 2")) == pytest.approx(0.5)
    assert edit_similarity(t("\\frac { a } { b }"), t("\\frac { a } { b }")) == 1.0
    assert edit_similarity([], t("a b")) == 0.0
    assert edit_similarity([], []) == 1.0
    # multi-character tokens count as one symbol each
    assert edit_distance(t("\\alpha"), t("\\beta")) == 1
    # corpus level: mean of 0.5 and 1.0
    assert mean_edit_similarity([t("x + 1"), t("a")], [t("x - 1 2"), t("a")]) == pytest.approx(0.75)


def test_exact_match_and_exprate():
    preds = [t("a + b"), t("a + c"), t("a"), t("x y z w")]
    refs = [t("a + b"), t("a + b"), t("a + b"), t("x")]
    # distances: 0, 1, 2, 3
    assert exact_match(preds, refs) == pytest.approx(0.25)
    assert exprate(preds, refs, max_errors=0) == pytest.approx(0.25)
    assert exprate(preds, refs, max_errors=1) == pytest.approx(0.5)
    assert exprate(preds, refs, max_errors=2) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        exact_match(preds, refs[:2])


def test_bleu4_single_sentence_by_hand():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2; equal lengths -> brevity penalty 1
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu4([t("a b c d e")], [t("a b c d f")]) == pytest.approx(expected)
    assert bleu4([t("a b c d e")], [t("a b c d f")]) == pytest.approx(0.668740, abs=1e-6)


def test_bleu4_corpus_sums_counts_and_brevity_penalty():
    preds = [t("a b c d e"), t("a b c d")]
    refs = [t("a b c d f"), t("a b c d e f")]
    # corpus counts: 8/9, 6/7, 4/5, 2/3; candidate length 9 < reference length 11
    expected = math.exp(1 - 11 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert bleu4(preds, refs) == pytest.approx(expected)
    # a short but perfect prefix is punished only by the brevity penalty: exp(1 - 6/4)
    assert bleu4([t("a b c d")], [t("a b c d e f")]) == pytest.approx(math.exp(-0.5))


def test_bleu4_clips_repeated_ngrams():
    # "the" x4 against a reference with one "the": unigram precision 1/4, no bigram match -> 0
    assert bleu4([t("the the the the")], [t("the cat sat on")]) == 0.0
    assert bleu4([t("a b c d")], [t("a b c d")]) == pytest.approx(1.0)
    assert bleu4([[]], [t("a")]) == 0.0


def _fake_tex(formula: str) -> np.ndarray | None:
    """A stand-in renderer: each distinct token string draws a distinct bar pattern; 'BAD' fails."""
    if "BAD" in formula:
        return None
    canvas = np.full((20, 10 + 6 * len(formula.split())), 255, dtype=np.uint8)
    for k, tok in enumerate(formula.split()):
        height = 2 + (sum(map(ord, tok)) % 12)
        canvas[3 : 3 + height, 5 + 6 * k : 9 + 6 * k] = 0
    return canvas


def test_image_match_compares_cropped_ink():
    def render(formulas):
        return [_fake_tex(f) for f in formulas]

    assert image_match("x + 1", "x + 1", render)
    assert not image_match("x + 1", "x - 1", render)
    assert not image_match("BAD", "BAD", render)  # a formula TeX rejects never matches
    assert image_matches(["a", "b", "a b"], ["a", "a", "a b"], render) == [True, False, True]
    asked = []
    assert image_matches(["a", "b", "BAD"], ["a", "a", "BAD"], lambda f: asked.extend(f) or render(f)) == [
        True,
        False,
        False,
    ]
    assert sorted(asked) == ["BAD", "a", "b"]  # each distinct formula rendered once


def test_image_match_with_tex(tex_available):
    # two spellings of one formula render to the same pixels; a different formula does not
    assert image_matches(["x^2+\\frac12", "x^{2}"], ["x ^ { 2 } + \\frac { 1 } { 2 }", "x_{2}"]) == [
        True,
        False,
    ]


def test_metric_set_accumulates_batches():
    m = MetricSet()
    m.update([t("a + b")], [t("a + b")])
    m.update([t("a + c"), t("x")], [t("a + b"), t("y z")])
    m.update_image_match([True, False, False])
    r = m.compute()
    assert r["count"] == 3
    assert r["exact_match"] == pytest.approx(1 / 3)
    assert r["exprate_1"] == pytest.approx(2 / 3)
    assert r["edit_similarity"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert r["image_match"] == pytest.approx(1 / 3)
    assert set(r) >= {"bleu4", "exprate", "exprate_2"}
    m.reset()
    assert len(m) == 0
