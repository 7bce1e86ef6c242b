"""The seed's label filters: bad labels, longest-match vocabulary filter, the TeX hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from texlens.data.clean import (
    LongestMatch,
    ascii_vocabulary,
    filter_labels,
    is_bad_label,
    longest_match_tokenize,
)
from texlens.latex import Vocab


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("  \t ", "empty"),
        (None, "empty"),
        ("error mathpix", "mathpix error"),
        ("Error Mathpix: request failed", "mathpix error"),
        ("已知函数的定义域为实数集", "prose, not LaTeX"),
        ("如图所示，求 x 的值", "prose, not LaTeX"),
        ("Find the value of x", "prose, not LaTeX"),
        ("x\x00y", "garbled text"),
        ("x \ufffd y", "garbled text"),
        (r"\frac{1}{2}", None),
        (r"\sqrt{3}<k<2", None),
        (r"\text { A. } 3 \mathrm{~cm}", None),
        (r"x=1 \text{ 米 }", None),  # a formula with a unit in Chinese: left to the vocabulary filter
        ("G_{1}, G_{2}, G_{3}", None),
        ("a b c", None),
    ],
)
def test_is_bad_label(raw: str | None, reason: str | None) -> None:
    assert is_bad_label(raw) == reason


def test_longest_match_prefers_the_longest_token_and_skips_spaces() -> None:
    vocab = [r"\le", r"\leq", "q", "x", "{", "}", r"\frac", "1", "2", r"\left", "(", r"\ "]
    assert longest_match_tokenize(r"x \leq 1", vocab) == ["x", r"\leq", "1"]
    assert longest_match_tokenize(r"\le q", vocab) == [r"\le", "q"]
    assert longest_match_tokenize(r"\frac{1}{2}", vocab) == [r"\frac", "{", "1", "}", "{", "2", "}"]
    assert longest_match_tokenize(r"\left(  x", vocab) == [r"\left", "("] + ["x"]
    assert longest_match_tokenize(r"x\ x", vocab) == ["x", r"\ ", "x"]
    assert longest_match_tokenize("", vocab) == []
    # One unmatched character drops the whole label: that is how the seed removed CJK text.
    assert longest_match_tokenize(r"x \le 米", vocab) is None
    assert longest_match_tokenize(r"\alpha", vocab) is None
    matcher = LongestMatch(vocab)
    assert longest_match_tokenize("x", matcher) == matcher("x") == ["x"]


def test_filter_labels_drops_cjk_and_keeps_formulas() -> None:
    labels = [
        r"\frac{1}{2}",  # 0 kept
        r"x=1 \text{ 米 }",  # 1 out of vocabulary (CJK character)
        "error mathpix",  # 2
        "",  # 3
        "已知函数的定义域",  # 4 prose
        r"\frac{1}{",  # 5 unbalanced
        r"x \le 2",  # 6 kept: \le is the raw spelling of the vocabulary's \leq
        r"\alpha + x",  # 7 \alpha not in the vocabulary
    ]
    vocab = Vocab.build(["\\frac { 1 } { 2 }", "x = 1 \\text { ~ m ~ }", "x \\leq 2 +"])
    kept, dropped = filter_labels(labels, vocab)
    assert kept == [0, 6]
    assert dropped == {
        "out of vocabulary": [1, 7],
        "mathpix error": [2],
        "empty": [3],
        "prose, not LaTeX": [4],
        "invalid LaTeX": [5],
    }
    # Without a vocabulary only the label checks and the parser apply.
    kept, dropped = filter_labels(labels)
    assert kept == [0, 1, 6, 7] and "out of vocabulary" not in dropped


def test_filter_labels_tex_check_hook() -> None:
    seen: list[list[str]] = []

    def tex_check(formulas: list[str]) -> list[str | None]:
        seen.append(formulas)
        return ["Undefined control sequence" if r"\foo" in f else None for f in formulas]

    kept, dropped = filter_labels([r"\foo x", "", "x^2", r"\foo"], tex_check=tex_check)
    assert kept == [2] and dropped == {"empty": [1], "rejected by TeX": [0, 3]}
    assert seen == [[r"\foo x", "x ^ { 2 }", r"\foo"]]  # one call, canonical forms of the survivors

    with pytest.raises(ValueError, match="verdicts"):
        filter_labels(["x", "y"], tex_check=lambda formulas: [None])


def test_ascii_vocabulary_filters_real_cn_math_labels(shared_data: Path) -> None:
    lines = (shared_data / "cn_math" / "im2latex_formulas.norm.lst").read_text(encoding="utf-8").split("\n")
    window = lines[60_000:70_000]  # holds both formulas that do not parse (0-based 63232 and 68592)
    window = window + ["已知数列的通项公式", "当 x > 0 时", r"x^{2} \text{（米）}"]
    vocab = ascii_vocabulary(window)
    assert r"\frac" in vocab and "米" not in vocab and all(t.isascii() for t in vocab)
    kept, dropped = filter_labels(window, vocab)
    assert dropped == {
        "invalid LaTeX": [3232, 8592],
        "prose, not LaTeX": [10_000],
        "out of vocabulary": [10_001, 10_002],  # CJK inside a formula: the longest match finds no token
    }
    assert len(kept) == 10_000 - 2
