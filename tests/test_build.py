"""`texlens data build` on the real shared data: every set is written, readable, and no validation formula is
trained on (a quick build: ``--limit`` samples per split)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from texlens.cli import app
from texlens.data.build import IM2LATEX_HELD_BACK, _bucket
from texlens.data.formats import read_dataset

TRAIN = ("train_cn_math", "train_synth", "train_im2latex_render", "train_im2latex_real", "train_crohme")
VAL = ("val_cn_math", "val_im2latex", "val_crohme")
LIMIT = 12


@pytest.fixture(scope="module")
def built(shared_data: Path, tex_available: bool, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("datasets")
    args = ["data", "build", "--shared", str(shared_data), "--out", str(out), "--limit", str(LIMIT)]
    result = CliRunner().invoke(app, [*args, "--synth", "10", "--fonts", "cm,times"])
    assert result.exit_code == 0, result.output
    return out


def _formulas(folder: Path) -> set[str]:
    samples, issues = read_dataset(folder)
    assert not issues, issues
    return {s.latex for s in samples}


def _fonts(folder: Path) -> set[str]:
    """Fonts of a rendered set (its images are named NUMBER_FONT.png)."""
    return {s.image.stem.rsplit("_", 1)[1] for s in read_dataset(folder)[0]}


def test_quick_build_writes_every_set_small(built: Path) -> None:
    for name in TRAIN + VAL:
        samples, issues = read_dataset(built / name)  # images checked: every label points at a picture
        assert not issues, (name, issues)
        assert samples, name
        # --limit bounds every split (synth makes its own --synth formulas), so a quick build is quick.
        assert len(samples) <= (10 if name == "train_synth" else LIMIT), name


def test_no_validation_formula_is_trained_on(built: Path) -> None:
    validated = set().union(*(_formulas(built / name) for name in VAL))
    for name in TRAIN:
        assert not _formulas(built / name) & validated, name


def test_validation_uses_the_held_out_font_and_the_held_back_im2latex_part(built: Path) -> None:
    assert _fonts(built / "val_cn_math") == {"euler"}
    train_fonts = _fonts(built / "train_cn_math")
    assert train_fonts <= {"cm", "times"}
    assert all(_bucket(f) in IM2LATEX_HELD_BACK for f in _formulas(built / "val_im2latex"))
    assert not any(_bucket(f) in IM2LATEX_HELD_BACK for f in _formulas(built / "train_im2latex_real"))
    # CROHME keeps its official split: test images only in validation.
    assert all("test_2014" in s.image.as_posix() for s in read_dataset(built / "val_crohme")[0])
    assert all("train_2014" in s.image.as_posix() for s in read_dataset(built / "train_crohme")[0])
