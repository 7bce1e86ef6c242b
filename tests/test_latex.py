"""Tokeniser, normaliser and vocabulary."""

from __future__ import annotations

import pytest

from texlens.latex import LatexError, Vocab, normalize, to_latex, tokenize


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (r"\frac12", r"\frac { 1 } { 2 }"),
        (r"{ \frac { 1 } { 2 } }", r"{ \frac { 1 } { 2 } }"),  # IM2LATEX style is kept: braces change spacing
        (r"x^2_{i}", r"x ^ { 2 } _ { i }"),
        (r"a\le b\ge c\ne d", r"a \leq b \geq c \neq d"),
        (r"\sqrt[3]x", r"\sqrt [ 3 ] { x }"),
        (r"\mathrm{~cm}", r"\mathrm { ~ c m }"),
        (r"\text { A. }", r"\text { ~ A . ~ }"),
        (r"\text{if  }x", r"\text { i f ~ } x"),
        (r"\mbox { i f }", r"\mbox { i f }"),
        (r"\begin {array}{ll}a&b\\c\end{array}", r"\begin{array} { l l } a & b \\ c \end{array}"),
        (r"\left(\frac{a}{b}\right.", r"\left ( \frac { a } { b } \right ."),
        (r"x^\frac12", r"x ^ { \frac { 1 } { 2 } }"),
        (r"f ( x _ { 1 } ) \leq f ( x _ { 2 } )", r"f ( x _ { 1 } ) \leq f ( x _ { 2 } )"),
        (r"\lt 3", r"< 3"),
        (r"a\ b", r"a ~ b"),
        ("a \\ ", "a ~"),  # trailing control space survives stripping
        (r"12 % comment", r"1 2"),
    ],
)
def test_normalize(raw: str, canonical: str) -> None:
    assert normalize(raw) == canonical
    # idempotent
    assert normalize(canonical) == canonical
    assert normalize(to_latex(canonical)) == canonical


@pytest.mark.parametrize("bad", ["{", "x}", "", "   ", "x^", r"\frac{1}", r"\begin{array"])
def test_normalize_rejects(bad: str) -> None:
    with pytest.raises(LatexError):
        normalize(bad)


def test_to_latex_is_compact_and_separates_words() -> None:
    assert to_latex(r"\frac { 1 } { 2 }") == r"\frac{1}{2}"
    assert to_latex([r"\alpha", "b"]) == r"\alpha b"
    assert to_latex(r"\mathrm { c m }") == r"\mathrm{cm}"


def test_tokenize_cjk_single_chars() -> None:
    assert tokenize(r"\text{解}x") == [r"\text", "{", "解", "}", "x"]


def test_vocab_roundtrip(tmp_path) -> None:
    v = Vocab.build(["x ^ { 2 }", "x + y"])
    assert v.itos[:5] == ["<pad>", "<start>", "<end>", "<unk>", "[MASK]"]
    ids = v.encode("x ^ { 2 } \\unknown")
    assert ids[0] == v.start_id and ids[-1] == v.end_id and v.unk_id in ids
    assert v.decode(v.encode("x + y")) == ["x", "+", "y"]
    v.save(tmp_path / "vocab.json")
    w = Vocab.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and len(w) == len(v)
    assert v.unknown(["x", "\\zeta"]) == ["\\zeta"]


def test_normalize_real_corpora(shared_data) -> None:
    """Nearly all real formulas of each dialect parse."""
    files = {
        "cn_math": shared_data / "cn_math" / "im2latex_formulas.norm.lst",
        "im2latex": shared_data / "im2latex100k" / "val.formulas.norm.txt",
    }
    for name, path in files.items():
        lines = [
            ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()[:20000] if ln.strip()
        ]
        ok = 0
        for ln in lines:
            try:
                normalize(ln)
                ok += 1
            except LatexError:
                pass
        assert ok / len(lines) > 0.99, name
    caps = (shared_data / "crohme" / "train_caption.txt").read_text().splitlines()
    for ln in caps[:2000]:
        normalize(ln.split("\t", 1)[1])
