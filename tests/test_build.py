"""`texlens data build` on the real shared data: every set is written, readable, and no validation formula is
trained on (a quick build: ``--limit`` samples per split)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from texlens.cli import app
from texlens.data.build import IM2LATEX_HELD_BACK, SETS, _bucket
from texlens.data.formats import read_dataset

TRAIN = tuple(name for name in SETS if name.startswith("train_"))  # the quick build must write every one
VAL = tuple(name for name in SETS if name.startswith("val_"))
LIMIT = 12
# Sets whose size the quick build sets by its own option rather than --limit.
SIZED = {
    "train_synth": ("--synth", 10),
    "train_synth_im": ("--synth-im", 7),
    "train_words": ("--words", 6),
    "train_bold": ("--bold", 5),
    "train_fonts": ("--more-fonts-count", 8),
    "train_fonts2": ("--extra-fonts-count", 6),
}


@pytest.fixture(scope="module")
def built(shared_data: Path, tex_available: bool, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("datasets")
    args = ["data", "build", "--shared", str(shared_data), "--out", str(out), "--limit", str(LIMIT)]
    args += ["--fonts", "cm,times", "--more-fonts", "bookman,helvet"]
    args += ["--extra-fonts", "sansmath,times-upright"]
    args += [arg for option, count in SIZED.values() for arg in (option, str(count))]
    result = CliRunner().invoke(app, args)
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
    assert sorted(p.name for p in built.iterdir()) == sorted(SETS) and len(TRAIN) == 10 and len(VAL) == 3
    for name in TRAIN + VAL:
        samples, issues = read_dataset(built / name)  # images checked: every label points at a picture
        assert not issues, (name, issues)
        assert samples, name
        # --limit bounds every split (synth makes its own --synth formulas), so a quick build is quick.
        assert len(samples) <= SIZED.get(name, ("--limit", LIMIT))[1], name


def test_no_validation_formula_is_trained_on(built: Path) -> None:
    validated = set().union(*(_formulas(built / name) for name in VAL))
    for name in TRAIN:
        assert not _formulas(built / name) & validated, name


def test_validation_uses_the_held_out_font_and_the_held_back_im2latex_part(built: Path) -> None:
    assert _fonts(built / "val_cn_math") == {"euler"}
    train_fonts = _fonts(built / "train_cn_math")
    assert train_fonts <= {"cm", "times"}
    assert _fonts(built / "train_fonts") == {"bookman", "helvet"}
    assert _fonts(built / "train_fonts2") == {"sansmath", "times-upright"}
    assert all(_bucket(f) in IM2LATEX_HELD_BACK for f in _formulas(built / "val_im2latex"))
    assert not any(_bucket(f) in IM2LATEX_HELD_BACK for f in _formulas(built / "train_im2latex_real"))
    # CROHME keeps its official split: test images only in validation.
    assert all("test_2014" in s.image.as_posix() for s in read_dataset(built / "val_crohme")[0])
    assert all("train_2014" in s.image.as_posix() for s in read_dataset(built / "train_crohme")[0])


def test_im2latex_recombinations_are_new_formulas_in_the_main_fonts(built: Path) -> None:
    synth_im, im_render = _formulas(built / "train_synth_im"), _formulas(built / "train_im2latex_render")
    assert len(synth_im) == SIZED["train_synth_im"][1]
    assert not synth_im & im_render and not synth_im & _formulas(built / "train_synth")
    assert _fonts(built / "train_synth_im") <= {"cm", "times"}


def test_only_writes_the_named_sets(shared_data: Path, tex_available: bool, tmp_path: Path) -> None:
    args = ["data", "build", "--shared", str(shared_data), "--out", str(tmp_path), "--limit", "4"]
    result = CliRunner().invoke(app, [*args, "--only", "train_fonts,val_crohme", "--more-fonts-count", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_fonts", "val_crohme"]
    assert len(read_dataset(tmp_path / "train_fonts")[0]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--only", "train_fontz"], "unknown set(s) ['train_fontz']"),
        (["--more-fonts", "helvet,euler"], "held-out font 'euler' must not be a training font"),
        (["--more-fonts", "avant,helvet"], "['avant'] are held out from training (UNSEEN_FONTS)"),
        (["--extra-fonts", "kerkis,euler"], "held-out font 'euler' must not be a training font"),
    ],
)
def test_bad_build_options_are_refused_before_any_work(
    shared_data: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["data", "build", "--shared", str(shared_data), "--out", str(tmp_path / "out"), "--limit", "4"]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
