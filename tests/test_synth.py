"""Recombined formulas are new, canonical and made of real pieces."""

from __future__ import annotations

from texlens.data.synth import SubexpressionPool, _groups, synthesize
from texlens.latex import normalize, to_latex


def test_groups_roles() -> None:
    tokens = r"\frac { a } { b + c } ^ { 2 } \sqrt { x }".split()
    roles = {(tuple(tokens[s:e]), r) for s, e, r in _groups(tokens)}
    assert (("a",), "frac") in roles and (("b", "+", "c"), "frac") in roles
    assert (("2",), "script") in roles and (("x",), "arg") in roles


def test_synthesize_real_formulas(shared_data) -> None:
    lines = (shared_data / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").splitlines()
    formulas = [normalize(x) for x in lines[:500] if x.strip()]
    held_out = set(formulas[:50])
    out = synthesize(formulas[50:], 300, seed=3, exclude=held_out)
    assert len(out) == 300 and len(set(out)) == 300
    assert not set(out) & set(formulas)  # new formulas only, none held out
    for f in out:
        assert normalize(to_latex(f)) == f  # canonical and parsable
    assert synthesize(formulas[50:], 50, seed=3, exclude=held_out) == out[:50]  # deterministic
    pool = SubexpressionPool(formulas)
    assert pool.by_role["script"] and pool.by_role["frac"] and pool.by_role["side"]
