"""Recombined formulas are new, canonical and made of real pieces."""

from __future__ import annotations

import pytest

from texlens.data.synth import SubexpressionPool, _groups, synthesize, synthesize_words, text_words
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
