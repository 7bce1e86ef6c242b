"""TeX Live renderer: real latex + dvipng on real cn_math formulas."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import texlens.data.render as render
from texlens.data.render import (
    FONTS,
    RenderError,
    check_formula,
    render_formulas,
    render_many_pixels,
    render_pixels,
    summarize_failures,
)
from texlens.latex import normalize

needs_tex = pytest.mark.skipif(
    shutil.which("latex") is None or shutil.which("dvipng") is None,
    reason="TeX Live (latex, dvipng) is not installed",
)

SAMPLE = r"\frac{1}{2} \sin \alpha+\sqrt{3} \leqslant \sum_{k=1}^{n} \overrightarrow{A B} \mathbb{R}"


def cn_math_train(shared_data: Path, n: int) -> list[str]:
    """The first n non-empty cn_math train formulas (malformed index lines skipped)."""
    lines = (shared_data / "cn_math" / "im2latex_formulas.norm.lst").read_text(encoding="utf-8").split("\n")
    out = []
    for row in (
        (shared_data / "cn_math" / "im2latex_train_filter.lst").read_text(encoding="utf-8").splitlines()
    ):
        parts = row.split()
        if (
            len(parts) == 2
            and parts[1].isdigit()
            and int(parts[1]) < len(lines)
            and lines[int(parts[1])].strip()
        ):
            out.append(lines[int(parts[1])])
        if len(out) == n:
            break
    return out


def read_labels(out: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in (out / "labels.tsv").read_text(encoding="utf-8").splitlines()]


# --- refusing dangerous TeX (no TeX needed) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "reason"),
    [
        (r"\def\x{1} \x", r"forbidden command \def"),
        (r"x \input{/etc/passwd}", r"forbidden command \input"),
        (r"\immediate\write18{rm -rf /}", r"forbidden command \immediate"),
        (r"\catcode`\$=11 x", r"forbidden command \catcode"),
        (r"\csname foo\endcsname", r"forbidden command \csname"),
        (r"a \end{document}", "forbidden environment document"),
        (r"\begin {preview} x", "forbidden environment preview"),
        (r"\iffalse x", r"forbidden command \iffalse"),
        (r"\expandafter x", r"forbidden command \expandafter"),
        (r"\newcommand{\x}{y}", r"forbidden command \newcommand"),
        (r"\usepackage{shellesc}", r"forbidden command \usepackage"),
        (r"\egroup x", r"forbidden command \egroup"),
        ("^^5cdef", "forbidden character ^^"),
        ("a $ b", "forbidden character $"),
        ("{a", "unbalanced braces"),
        ("a}{", "unbalanced braces"),
        ("", "empty"),
        ("% just a comment", "empty"),
        ("  \n ", "empty"),
    ],
)
def test_check_formula_refuses(formula: str, reason: str) -> None:
    assert check_formula(formula) == reason


@pytest.mark.parametrize(
    "formula",
    [
        SAMPLE,
        r"a \iff b",
        r"\$ 5 \% \{ x \} \#",
        r"\text { A. } \mathrm{~cm}",
        "x \\",
        r"\left( \frac{a}{b} \right)",
    ],
)
def test_check_formula_allows(formula: str) -> None:
    assert check_formula(formula) is None


def test_comments_are_dropped_as_tex_drops_them() -> None:
    assert render._clean("50 \\% off % a comment\n  + x % another") == "50 \\% off + x"
    assert render._clean("a \\\\% b") == "a \\\\"
    assert check_formula("50 % off") is None


def test_spaced_lengths_of_tokenised_corpora_are_joined() -> None:
    assert render._clean(r"a \hspace { 0 . 3 i n } b \rule [ - 1 p t ] { 2 c m } { x }") == (
        r"a \hspace {0.3in} b \rule [-1pt] {2cm} { x }"
    )
    assert render._clean(r"\raisebox { 1 e x } { a b }") == r"\raisebox {1ex} { a b }"


def test_refused_formulas_never_reach_tex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_chunk(items, font):  # records what would go to TeX and renders nothing
        seen.extend(item.formula for item in items)
        return {item.index: "not rendered in this test" for item in items}

    monkeypatch.setattr(render, "_render_chunk", fake_chunk)
    monkeypatch.setattr(render, "_require_tex", lambda: None)
    monkeypatch.setattr(render, "_check_preamble", lambda font: None)
    formulas = ["x+1", r"\def\a{b}", "", r"a \write18{ls}"]
    report = render_formulas(formulas, tmp_path, progress=False)
    assert seen == ["x+1"]
    assert dict(report.failures) == {
        0: "not rendered in this test",
        1: r"forbidden command \def",
        2: "empty",
        3: r"forbidden command \write",
    }
    assert (tmp_path / "failures.tsv").read_text().splitlines()[1] == "1\tforbidden command \\def"


# --- real TeX -----------------------------------------------------------------------------------------------


@needs_tex
def test_cn_math_formulas_render_to_grey_pngs_with_labels(shared_data: Path, tmp_path: Path) -> None:
    formulas = cn_math_train(shared_data, 12)
    report = render_formulas(formulas, tmp_path, jobs=2, chunk_size=5, progress=False)
    assert not report.failures, report.failures
    assert [r[1] for r in report.rendered] == list(range(12))
    labels = read_labels(tmp_path)
    assert labels == [(f"images/{i:07d}_cm.png", normalize(f)) for i, f in enumerate(formulas)]
    for rel, _ in labels:
        with Image.open(tmp_path / rel) as im:
            assert im.mode == "L"  # 8-bit grey
            pixels = np.asarray(im)
        assert pixels.min() < 64, "dark ink"
        assert pixels.mean() > 128, "on white"
        assert pixels.shape[0] > 8 and pixels.shape[1] > 8
    assert (tmp_path / "failures.tsv").read_text() == ""


@needs_tex
def test_bad_formula_fails_alone_with_tex_reason(tmp_path: Path) -> None:
    good = [r"\frac{1}{2}", r"x_{1}+x_{2}", r"\sqrt{3}<k<2", r"\triangle A B C"]
    formulas = [good[0], r"x \undefinedmacro y", good[1], r"x^{2}^{3}", r"\left( x", good[2], "#", good[3]]
    report = render_formulas(formulas, tmp_path, chunk_size=100, jobs=1, progress=False)
    assert dict(report.failures) == {
        1: r"Undefined control sequence \undefinedmacro",
        3: "Double superscript",
        4: r"Extra }, or forgotten \right",
        6: "You can't use `macro parameter character #' in math mode",
    }
    assert [r[1] for r in report.rendered] == [0, 2, 5, 7]
    # The neighbours of the bad formulas look exactly as they do alone.
    for rel, index, _, _ in report.rendered:
        alone = render_pixels(formulas[index])
        assert np.array_equal(cv2.imread(str(tmp_path / rel), cv2.IMREAD_GRAYSCALE), alone)
    assert summarize_failures(report.failures)[0][1] == 1
    summary = [line.strip() for line in report.summary().splitlines()]
    assert "1  Undefined control sequence \\undefinedmacro" in summary


@needs_tex
def test_im2latex_tokenised_lengths_render_like_the_original(shared_data: Path) -> None:
    lines = (shared_data / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").splitlines()
    spaced = next(line for line in lines if r"\hspace { 1 c m }" in line)
    original = re.sub(r"\\hspace \{ 1 c m \}", r"\\hspace{1cm}", spaced)
    assert np.array_equal(render_pixels(spaced), render_pixels(original))


@needs_tex
def test_blank_and_oversized_formulas_fail(tmp_path: Path) -> None:
    report = render_formulas([r"\,", r"\rule{100cm}{1cm}", "x"], tmp_path, jobs=1, progress=False)
    assert dict(report.failures) == {
        0: "blank image (no ink)",
        1: f"Formula too large (over {render.MAX_WIDTH_PT}pt x {render.MAX_HEIGHT_PT}pt)",
    }


@needs_tex
def test_timeouts_bisect_down_to_single_formulas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render._check_preamble("cm")  # the probe itself must not time out
    monkeypatch.setattr(render, "_compile_timeout", lambda count: 0.0001)
    report = render_formulas(["a", "b", "c"], tmp_path, jobs=1, progress=False)
    assert report.rendered == []
    assert dict(report.failures) == {0: "latex timed out", 1: "latex timed out", 2: "latex timed out"}


@needs_tex
def test_each_font_renders_its_own_glyphs(tmp_path: Path) -> None:
    report = render_formulas([SAMPLE], tmp_path, fonts=list(FONTS), dpi=150, progress=False)
    assert not report.failures
    assert [r[0] for r in report.rendered] == [f"images/0000000_{font}.png" for font in FONTS]
    images = [cv2.imread(str(tmp_path / r[0]), cv2.IMREAD_GRAYSCALE) for r in report.rendered]
    for image in images:
        assert image.min() < 64
    # Pairwise different pictures: compare ink masks resized to one size.
    masks = [cv2.resize(255 - im, (300, 40), interpolation=cv2.INTER_AREA).astype(float) for im in images]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert np.abs(masks[i] - masks[j]).mean() > 2, (list(FONTS)[i], list(FONTS)[j])


@needs_tex
def test_each_image_of_a_dpi_range_is_its_own_formula_whole(tmp_path: Path) -> None:
    """With a DPI per formula, every image equals the formula rendered alone at its DPI (dvipng once gave the
    first page of each DPI's run the box of the page before it: another formula's size, the formula cut)."""
    formulas = [r"a", r"\frac{x^{2}+1}{y}", r"f(x)=e^{2}\cos x-x", r"S=S+i", r"\sum_{k=1}^{n}k", r"[10,20)"]
    formulas += [r"\sqrt{2}", r"a_{1}a_{2}a_{3}a_{4}", r"\alpha+\beta=\gamma", r"x\in\mathbf{R}"]
    report = render_formulas(formulas, tmp_path, dpi=(100, 130), seed=3, progress=False)
    assert not report.failures and len({dpi for *_, dpi in report.rendered}) > 3
    for rel, index, font, dpi in report.rendered:
        image = cv2.imread(str(tmp_path / rel), cv2.IMREAD_GRAYSCALE)
        alone = render_pixels(formulas[index], font=font, dpi=dpi)
        assert image.shape == alone.shape and np.array_equal(image, alone), (formulas[index], dpi)


@needs_tex
def test_rerun_is_deterministic_and_dpi_range_is_seeded(tmp_path: Path) -> None:
    formulas = [r"x^{2}", r"\frac{a}{b}", r"\alpha+\beta", r"\sqrt{2}", r"a \neq b", r"\pi r^{2}"]
    runs = [
        render_formulas(formulas, tmp_path / f"run{k}", dpi=(100, 300), seed=7, progress=False)
        for k in (0, 1)
    ]
    assert runs[0].rendered == runs[1].rendered
    for rel, *_ in runs[0].rendered:
        assert (tmp_path / "run0" / rel).read_bytes() == (tmp_path / "run1" / rel).read_bytes()
    assert (tmp_path / "run0" / "labels.tsv").read_text() == (tmp_path / "run1" / "labels.tsv").read_text()
    dpis = [r[3] for r in runs[0].rendered]
    assert all(100 <= d <= 300 for d in dpis) and len(set(dpis)) > 1
    other = render_formulas(formulas, tmp_path / "seed8", dpi=(100, 300), seed=8, progress=False)
    assert [r[3] for r in other.rendered] != dpis


@needs_tex
def test_pixels_api() -> None:
    small, large = render_pixels("x+y", dpi=100), render_pixels("x+y", dpi=400)
    assert small.dtype == np.uint8 and small.ndim == 2
    assert 3.5 < large.shape[1] / small.shape[1] < 4.5
    many = render_many_pixels(["x+y", r"\nosuchmacro", r"\def\a{}", "a"], dpi=100)
    assert np.array_equal(many[0], small)
    assert many[1] is None and many[2] is None and many[3] is not None
    with pytest.raises(RenderError, match=r"Undefined control sequence \\nosuchmacro"):
        render_pixels(r"\nosuchmacro")
    with pytest.raises(ValueError, match="unknown font"):
        render_pixels("x", font="comic")
