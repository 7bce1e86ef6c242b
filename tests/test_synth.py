"""Recombined formulas are new, canonical and made of real pieces."""

from __future__ import annotations

import random

import pytest

from texlens.data.synth import (
    SubexpressionPool,
    _groups,
    embolden,
    synthesize,
    synthesize_bold,
    synthesize_words,
    text_words,
)
from texlens.latex import normalize, to_latex


def test_groups_roles() -> None:
    tokens = r"\frac { a } { b + c } ^ { 2 } \sqrt { x }".split()
    roles = {(tuple(tokens[s:e]), r) for s, e, r in _groups(tokens)}
    assert (("a",), "frac") in roles and (("b", "+", "c"), "frac") in roles
    assert (("2",), "script") in roles and (("x",), "arg") in roles


@pytest.fixture(scope="module")
def formulas(shared_data) -> list[str]:
    """The first 500 IM2LATEX validation formulas, canonical."""
    lines = (shared_data / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").splitlines()
    return [normalize(x) for x in lines[:500] if x.strip()]


def test_synthesize_real_formulas(formulas: list[str]) -> None:
    held_out = set(formulas[:50])
    out = synthesize(formulas[50:], 300, seed=3, exclude=held_out)
    assert len(out) == 300 and len(set(out)) == 300
    assert not set(out) & set(formulas)  # new formulas only, none held out
    for f in out:
        assert normalize(to_latex(f)) == f  # canonical and parsable
    assert synthesize(formulas[50:], 50, seed=3, exclude=held_out) == out[:50]  # deterministic
    pool = SubexpressionPool(formulas)
    assert pool.by_role["script"] and pool.by_role["frac"] and pool.by_role["side"]


def test_text_words_reads_upright_arguments_only() -> None:
    tokens = r"E _ { \mathrm { k i n } } = x \quad \text { f o r ~ a l l ~ } y , \mathbf { v } \operatorname { T r }".split()
    assert text_words(tokens) == ["kin", "for", "all", "Tr"]


def test_synthesize_words_adds_upright_words_to_real_formulas(formulas: list[str]) -> None:
    held_out = set(formulas[:50])
    out = synthesize_words(formulas[50:], 200, seed=4, exclude=held_out)
    assert len(out) == 200 and len(set(out)) == 200
    assert not set(out) & set(formulas)
    known = {w for f in formulas[50:] for w in text_words(f.split())}
    new_words = set()
    for f in out:
        assert normalize(to_latex(f)) == f
        words = text_words(f.split())
        assert words, f  # every formula got words
        new_words |= set(words) - known
    # Mostly made-up words, read letter by letter: many, and all letters.
    assert len(new_words) > 150 and all(w.isalpha() for w in new_words)
    assert synthesize_words(formulas[50:], 40, seed=4, exclude=held_out) == out[:40]


BOLD = {r"\bf", r"\mathbf", r"\boldsymbol"}


def test_embolden_sets_plain_symbols_in_bold_only() -> None:
    tokens = r"\begin{array} { l c } x _ 1 & \mathrm { d } \alpha \hspace { 2 p t } \end{array}".split()
    seen = set()
    for seed in range(200):
        for style in ("im", "cn"):
            out = embolden(tokens, random.Random(seed), style)
            text = " ".join(out)
            # Never the array's column letters, an upright d or a length; Greek only with \boldsymbol, and a bare
            # script's symbol in braces.
            assert (
                text.startswith(r"\begin{array} { l c }") and r"\mathrm { d }" in text and "{ 2 p t }" in text
            )
            assert r"\boldsymbol { \alpha }" in text or r" \alpha" in text
            assert "_ 1" in text or "_ { " in text
            # It parses, and a bare script stays bare unless its symbol was set in bold.
            assert normalize(to_latex(text)) == text.replace("_ 1", "_ { 1 }")
            commands = [t for t in out if t in BOLD]
            assert commands, text
            seen.add((style, *sorted(set(commands))))
    # IM2LATEX's style writes \bf and \mathbf, cn_math's never \bf.
    assert any(r"\bf" in s for s in seen if s[0] == "im") and not any(
        r"\bf" in s for s in seen if s[0] == "cn"
    )
    assert any(r"\boldsymbol" in s and r"\mathbf" in s for s in seen if s[0] == "cn")
    # Nothing already bold or in another font is set in bold (again).
    for fixed in (
        r"\mathrm { d }",
        r"{ \bf p } ^ { \prime }",
        r"{ \rm d x }",
        r"\boldsymbol { \alpha } { \cal L }",
    ):
        assert embolden(fixed.split(), random.Random(0)) == fixed.split()


def test_synthesize_bold_adds_bold_to_real_formulas(formulas: list[str]) -> None:
    held_out = set(formulas[:50])
    out = synthesize_bold(formulas[50:], 200, seed=5, exclude=held_out)
    assert len(out) == 200 and len(set(out)) == 200 and not set(out) & set(formulas)
    bases = {tuple(t for t in f.split() if t not in BOLD and t not in "{}") for f in formulas[50:]}
    for f in out:
        assert normalize(to_latex(f)) == f
        tokens = f.split()
        assert any(t in BOLD for t in tokens), f
        # Bold commands and braces aside, a real formula: only bold was added.
        assert tuple(t for t in tokens if t not in BOLD and t not in "{}") in bases, f
    assert synthesize_bold(formulas[50:], 40, seed=5, exclude=held_out) == out[:40]
