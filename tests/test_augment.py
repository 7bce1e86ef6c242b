"""texlens.data.augment on real printed and handwritten images."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from texlens.data.augment import AugmentConfig, build_augment, contact_sheet
from texlens.image import ImageError, load_image, preprocess


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[np.ndarray]:
    """A few real IM2LATEX val images (dark on white) and CROHME images (white on black)."""
    printed = sorted((shared_data / "im2latex100k" / "images_val").glob("*.png"))[:6]
    hand = sorted((shared_data / "crohme" / "test_2014").glob("*.png"))[:4]
    return [np.asarray(load_image(p)) for p in printed + hand]


def content_height(array: np.ndarray) -> int:
    """Rows between the first and last row with ink in a preprocessed array."""
    rows = np.flatnonzero(array.max(axis=1) > 0.5)
    return int(rows[-1] - rows[0] + 1)


def test_strength_zero_is_identity(samples: list[np.ndarray]) -> None:
    augment = build_augment(0.0, seed=1)
    for image in samples:
        out = augment(image)
        assert out.dtype == np.uint8 and np.array_equal(out, image)
        assert out is not image


def test_shape_and_dtype_kept_and_images_change(samples: list[np.ndarray]) -> None:
    augment = build_augment(1.0, seed=2)
    changed = 0
    for image in samples:
        for _ in range(5):
            out = augment(image)
            assert out.shape == image.shape and out.dtype == np.uint8
            changed += not np.array_equal(out, image)
    assert changed >= 0.8 * 5 * len(samples)


def test_handwriting_comes_out_dark_on_light(samples: list[np.ndarray]) -> None:
    augment = build_augment(1.0, seed=3, config=AugmentConfig(invert_p=0.0))
    for image in samples[-4:]:
        assert np.median(image) < 50  # CROHME: white strokes on black
        assert np.median(augment(image)) > 150


def test_seeded_runs_repeat(samples: list[np.ndarray]) -> None:
    a, b, c = build_augment(1.0, seed=7), build_augment(1.0, seed=7), build_augment(1.0, seed=8)
    outs_a = [a(x) for x in samples]
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, [b(x) for x in samples], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(outs_a, [c(x) for x in samples], strict=True))


def test_nothing_is_destroyed(samples: list[np.ndarray]) -> None:
    """Every augmented image still preprocesses, at a glyph scale close to the original's."""
    augment = build_augment(1.0, seed=4)
    ratios = []
    for image in samples:
        base = content_height(preprocess(image))
        for _ in range(8):
            try:
                out = preprocess(augment(image))
            except ImageError as exc:
                pytest.fail(f"augmentation destroyed an image: {exc}")
            ratios.append(content_height(out) / base)
    ratios = np.asarray(ratios)
    assert 0.5 < ratios.min() and ratios.max() < 2.0
    assert np.mean((ratios > 0.7) & (ratios < 1.4)) > 0.85


def test_stronger_means_more_change(samples: list[np.ndarray]) -> None:
    def mean_change(strength: float) -> float:
        augment = build_augment(strength, seed=5, config=AugmentConfig(invert_p=0.0, geometry_p=0.0))
        image = samples[0]
        return float(np.mean([np.abs(augment(image).astype(int) - image).mean() for _ in range(20)]))

    assert mean_change(0.2) < mean_change(1.0)


def test_cheap_enough(samples: list[np.ndarray]) -> None:
    # The budget is 3 ms per 400x60 image (benchmarks/preprocess_speed.py measures it); CPU time with
    # a wide margin here so that a busy CI machine does not fail the test.
    image = samples[0]
    augment = build_augment(1.0, seed=6)
    start = time.process_time()
    for _ in range(50):
        augment(image)
    assert (time.process_time() - start) / 50 < 0.015


def test_negative_strength_is_refused() -> None:
    with pytest.raises(ValueError):
        build_augment(-0.5)


def test_contact_sheet(samples: list[np.ndarray], tmp_path: Path) -> None:
    augment = build_augment(1.0, seed=0)
    out = contact_sheet(samples[:3], tmp_path / "sheet.png", augment, n_variants=4, labels=["a", "b", "c"])
    sheet = Image.open(out)
    assert sheet.mode == "RGB"
    # Three rows of one original + four variants, each at least one preprocessed image high (x2 zoom).
    assert sheet.height >= 3 * 32 * 2 and sheet.width >= 5 * 32 * 2
    pixels = np.asarray(sheet)
    assert (pixels == 255).all(axis=2).mean() > 0.2  # white paper of the cells is visible
    raw = contact_sheet(samples[-2:], tmp_path / "raw.png", augment, n_variants=2, model_view=False)
    assert Image.open(raw).height >= sum(min(s.shape[0], 200) for s in samples[-2:])


ONLY_SYMBOLS = AugmentConfig(
    symbols_p=1.0, stroke_p=0, geometry_p=0, elastic_p=0, resolution_p=0, blur_p=0, paper_p=0, noise_p=0,
    jpeg_p=0, invert_p=0,
)  # fmt: skip


def test_symbols_jitter_moves_each_symbol_a_little_and_keeps_them_all(samples: list[np.ndarray]) -> None:
    import cv2

    from texlens.image import analyse_ink

    augment = build_augment(1.0, seed=9, config=ONLY_SYMBOLS)
    for image in samples[-4:]:  # CROHME
        before = analyse_ink(image)
        out = augment(image)
        after = analyse_ink(out)
        assert out.shape == image.shape and not np.array_equal(out, before.grey)
        ink_before, ink_after = (before.grey <= before.threshold).sum(), (after.grey <= after.threshold).sum()
        assert 0.75 < ink_after / ink_before < 1.33  # symbols are resized by at most 12 %
        # no symbol breaks up or vanishes; a few close ones may come to touch, as in anyone's handwriting
        assert 2 * len(before.stats) / 3 <= len(after.stats) <= len(before.stats) + 1
        # and where it was: the ink's bounding box moves by a fraction of the formula's height
        box = [np.array(cv2.boundingRect((x.grey <= x.threshold).astype(np.uint8))) for x in (before, after)]
        assert np.abs(box[0] - box[1]).max() <= 0.25 * box[0][3] + 3


def test_symbols_jitter_keeps_a_fraction_bar_whole_and_level() -> None:
    image = np.full((120, 220), 255, np.uint8)
    image[60:63, 20:200] = 0  # a fraction bar, 180 px long
    for x in (40, 80, 120):  # digits-sized blobs above and below it
        image[25:50, x : x + 14] = 0
        image[75:100, x : x + 14] = 0
    augment = build_augment(1.0, seed=3, config=ONLY_SYMBOLS)
    for _ in range(10):
        out = augment(image)
        bar = out[52:72] < 128
        cols = np.flatnonzero(bar.any(axis=0))
        assert cols[-1] - cols[0] >= 170  # not shrunk
        rows = [np.flatnonzero(bar[:, c]).mean() for c in (cols[0] + 2, cols[-1] - 2)]
        assert abs(rows[0] - rows[1]) <= 5  # turned by ~1 degree at most: its ends stay within the shift


def test_print_perturbations_leave_symbols_in_place() -> None:
    assert AugmentConfig().symbols_p == 0.0
    from texlens.data.augment import HANDWRITING

    assert HANDWRITING.symbols_p > 0 and HANDWRITING.elastic_p > AugmentConfig().elastic_p


def test_cli_contact_sheet_shows_handwriting_perturbations(shared_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from texlens.cli import app

    captions = str(shared_data / "crohme" / "train_caption.txt")
    out = tmp_path / "hand.png"
    args = ["data", "contact-sheet", captions, str(out), "--rows", "2", "--kind", "handwriting"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).width > 200
    result = CliRunner().invoke(app, [*args[:-1], "cursive"])
    assert result.exit_code != 0 and "print, handwriting" in result.output
    assert not (tmp_path / "cursive").exists()


def test_print_stroke_weight_never_passes_regular_type_for_bold_or_bold_for_regular(
    tex_available: bool,
) -> None:
    """Bold Computer Modern carries ~45 % more ink than regular; thicker or thinner strokes must not cross that
    line at any size, or the model learns that heavy type is not bold (it read 6 of 38 bold IM2LATEX formulas
    when print perturbations could add a full 3x3 step)."""
    from texlens.data.augment import HANDWRITING
    from texlens.data.render import render_many_pixels

    regular = r"E ( v ) = \frac { d } { d t } E ( q ) , \quad x _ { 2 } + 7 B"
    bold = r"\mathbf { E } ( \mathbf { v } ) = \frac { \mathbf { d } } { \mathbf { d } t } \mathbf { E } ( \mathbf { q } ) , \quad \mathbf { x } _ { \mathbf { 2 } } + \mathbf { 7 } \mathbf { B }"
    only_strokes = AugmentConfig(
        stroke_p=1.0,
        geometry_p=0,
        elastic_p=0,
        resolution_p=0,
        blur_p=0,
        paper_p=0,
        noise_p=0,
        jpeg_p=0,
        invert_p=0,
    )

    def ink(image: np.ndarray) -> float:
        return float((255.0 - image.astype(np.float64)).sum() / 255.0)

    for dpi in (110, 260):  # the training renders' range: glyphs of about 12 and 28 px
        reg, bf = render_many_pixels([regular, bold], dpi=dpi)
        assert ink(bf) > 1.35 * ink(reg)
        augment = build_augment(1.0, seed=dpi, config=only_strokes)
        heaviest = max(ink(augment(reg)) for _ in range(40))
        lightest = min(ink(augment(bf)) for _ in range(40))
        assert 1.05 * ink(reg) < heaviest < 0.85 * ink(bf)  # it does change the weight, but not to bold's
        assert 1.2 * ink(reg) < lightest < 0.98 * ink(bf)
        # Handwriting (no bold) takes a wider range.
        wide = build_augment(1.0, seed=dpi, config=replace(only_strokes, stroke_max=HANDWRITING.stroke_max))
        assert max(ink(wide(reg)) for _ in range(40)) > 1.25 * ink(reg)
