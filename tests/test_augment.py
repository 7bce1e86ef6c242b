"""texlens.data.augment on real printed and handwritten images."""

from __future__ import annotations

import time
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
