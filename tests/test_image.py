"""texlens.image on real files: every decode path, broken inputs, polarity, cropping and glyph-size scaling."""

from __future__ import annotations

import io
import struct
import subprocess
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from texlens.image import (
    ImageError,
    InkCrop,
    PreprocessConfig,
    analyse_ink,
    batch_images,
    estimate_glyph_height,
    glyph_height_from_stats,
    load_image,
    preprocess,
    to_pil,
)

CFG = PreprocessConfig()


@pytest.fixture(scope="module")
def im2latex_dir(shared_data: Path) -> Path:
    return shared_data / "im2latex100k" / "images_val"


@pytest.fixture(scope="module")
def printed(im2latex_dir: Path) -> Path:
    """A real IM2LATEX val image (RGB PNG, dark ink on white)."""
    return im2latex_dir / "0.png"


@pytest.fixture(scope="module")
def handwritten(shared_data: Path) -> Path:
    """A real CROHME image (8-bit grey, white strokes on black)."""
    return shared_data / "crohme" / "test_2014" / "18_em_0_0.png"


@pytest.fixture(scope="module")
def reference(printed: Path) -> np.ndarray:
    """The printed image as grey uint8, decoded independently of texlens."""
    return np.asarray(Image.open(printed).convert("L"))


def content_height(array: np.ndarray) -> int:
    """Rows between the first and the last row holding ink (> 0.5) in a preprocessed array."""
    rows = np.flatnonzero(array.max(axis=1) > 0.5)
    return int(rows[-1] - rows[0] + 1)


def glyph_after(array: np.ndarray) -> float:
    """Glyph-height estimate measured on a preprocessed array."""
    return glyph_height_from_stats(analyse_ink((255 - array * 255).astype(np.uint8)).stats)


def similar(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two grey images of the same shape."""
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


# ---------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------


def test_im2latex_rgb_png_decodes_to_grey(printed: Path, reference: np.ndarray) -> None:
    img = load_image(printed)
    assert img.mode == "L" and img.size == Image.open(printed).size
    assert np.array_equal(np.asarray(img), reference)


def test_crohme_white_on_black_gives_ink_one_on_strokes(handwritten: Path) -> None:
    source = np.asarray(load_image(handwritten))
    assert np.median(source) < 50  # strokes are white on black in the published files
    assert analyse_ink(source).inverted
    out = preprocess(source)
    assert out[0].max() == 0 and out[:, 0].max() == 0  # background (margin) is 0
    assert out.max() == pytest.approx(1.0)
    assert 0.02 < float((out > 0.5).mean()) < 0.3  # strokes, not the black ground, are ink
    # Without any rescaling the ink pixels must be exactly where the white strokes are.
    same_size = preprocess(source, PreprocessConfig(target_glyph_height=estimate_glyph_height(source)))
    x0, y0, w, h = cv2.boundingRect((source > 127).astype(np.uint8))
    crop = source[y0 : y0 + h, x0 : x0 + w] > 127
    m = CFG.margin
    assert similar(same_size[m + 1 : m + 1 + h, m + 1 : m + 1 + w] > 0.5, crop) > 0.9


def test_im2markup_sample_palette_with_transparency(shared_data: Path) -> None:
    path = next(iter(sorted((shared_data / "im2markup_sample" / "images").glob("*.png"))))
    assert Image.open(path).mode == "P"
    grey = np.asarray(load_image(path))
    assert np.median(grey) == 255  # transparent page composited over white, ink dark
    out = preprocess(grey)
    assert out.shape[0] <= CFG.max_height and out.shape[1] <= CFG.max_width
    assert abs(glyph_after(out) - CFG.target_glyph_height) < 0.25 * CFG.target_glyph_height


def test_default_glyph_height_keeps_im2latex_at_native_scale(im2latex_dir: Path) -> None:
    files = sorted(im2latex_dir.glob("*.png"))[:80]
    estimates = []
    for path in files:
        try:
            estimates.append(estimate_glyph_height(path))
        except ImageError:
            pass  # the validation split holds a few blank renders
    scale = CFG.target_glyph_height / np.median(estimates)
    assert 0.9 < scale < 1.1


def test_printed_and_handwritten_come_out_at_the_same_glyph_size(
    im2latex_dir: Path, shared_data: Path
) -> None:
    printed = [glyph_after(preprocess(p)) for p in sorted(im2latex_dir.glob("*.png"))[:12]]
    hand = [
        glyph_after(preprocess(p)) for p in sorted((shared_data / "crohme" / "test_2014").glob("*.png"))[:12]
    ]
    assert abs(np.median(printed) / np.median(hand) - 1) < 0.15
    assert abs(np.median(hand) / CFG.target_glyph_height - 1) < 0.15


def test_ink_found_once_gives_every_scale_preprocess_gives(im2latex_dir: Path, shared_data: Path) -> None:
    configs = [CFG, PreprocessConfig(handwriting_glyph_height=14).for_handwriting(), CFG.zoomed(1.12)]
    for path in [
        sorted(im2latex_dir.glob("*.png"))[1],
        sorted((shared_data / "crohme" / "test_2014").glob("*.png"))[0],
    ]:
        ink = InkCrop.of(path)
        views = [ink.scaled(cfg) for cfg in configs]
        for view, cfg in zip(views, configs, strict=True):
            np.testing.assert_array_equal(view, preprocess(path, cfg))
        # Zoomed 1.12x: glyphs (and so the ink) about 1.12x as high.
        assert glyph_after(views[2]) / glyph_after(views[0]) == pytest.approx(1.12, rel=0.15)
    zoomed = PreprocessConfig(target_glyph_height=10, handwriting_glyph_height=14).zoomed(1.5)
    assert (zoomed.target_glyph_height, zoomed.handwriting_glyph_height) == (15, 21)
    assert CFG.zoomed(2).handwriting_glyph_height is None


# ---------------------------------------------------------------------------------------------------
# Every decode path, made from a real image
# ---------------------------------------------------------------------------------------------------


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


FORMATS = {
    "jpeg": lambda im, d: _save(im.convert("RGB"), d / "f.jpg", quality=92),
    "bmp": lambda im, d: _save(im, d / "f.bmp"),
    "webp": lambda im, d: _save(im, d / "f.webp", lossless=True),
    "gif": lambda im, d: _save(im.convert("P"), d / "f.gif"),
    "tiff": lambda im, d: _save(im, d / "f.tiff"),
    "png16": lambda im, d: _save(
        Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257), d / "f16.png"
    ),
    "palette": lambda im, d: _save(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), d / "p.png"),
    "cmyk_jpeg": lambda im, d: _save(im.convert("CMYK"), d / "c.jpg", quality=95),
    "cmyk_tiff": lambda im, d: _save(im.convert("CMYK"), d / "c.tiff"),
    "one_bit": lambda im, d: _save(
        im.convert("L").point(lambda v: 255 if v > 128 else 0).convert("1"), d / "b.png"
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_decode_paths(fmt: str, printed: Path, reference: np.ndarray, tmp_path: Path) -> None:
    path = FORMATS[fmt](Image.open(printed), tmp_path)
    img = load_image(path)
    assert img.mode == "L" and img.size == (reference.shape[1], reference.shape[0])
    grey = np.asarray(img)
    assert similar(grey, reference) > 0.9, fmt
    assert np.median(grey) > 200  # still dark ink on white
    assert load_image(path.read_bytes()).size == img.size  # bytes decode the same way
    out = preprocess(img)
    assert out.dtype == np.float32 and out.max() > 0.9


def test_16_bit_png_is_scaled_not_clipped(printed: Path, reference: np.ndarray, tmp_path: Path) -> None:
    path = FORMATS["png16"](Image.open(printed), tmp_path)
    assert Image.open(path).mode.startswith("I")
    assert np.abs(np.asarray(load_image(path)).astype(int) - reference).max() <= 1


def test_rgba_alpha_is_composited_over_white(reference: np.ndarray, tmp_path: Path) -> None:
    # Black ink whose coverage lives in the alpha channel, fully transparent background.
    rgba = np.zeros((*reference.shape, 4), np.uint8)
    rgba[..., 3] = 255 - reference
    path = _save(Image.fromarray(rgba), tmp_path / "a.png")
    assert np.abs(np.asarray(load_image(path)).astype(int) - reference).max() <= 1
    la = Image.fromarray(rgba).convert("LA")
    assert np.abs(np.asarray(load_image(la)).astype(int) - reference).max() <= 1


def test_gif_first_frame(reference: np.ndarray, tmp_path: Path) -> None:
    first = Image.fromarray(reference).convert("P")
    second = Image.fromarray(255 - reference).convert("P")
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100)
    assert similar(np.asarray(load_image(path)), reference) > 0.95


@pytest.mark.parametrize(
    "make",
    [
        lambda g: g,
        lambda g: g.astype(np.uint16) * 257,
        lambda g: g.astype(np.float32) / 255.0,
        lambda g: g > 128,
        lambda g: np.repeat(g[..., None], 3, axis=2),
        lambda g: np.dstack([g, g, g, np.full_like(g, 255)]),
        lambda g: g[None],  # channel-first (1, H, W)
    ],
    ids=["uint8", "uint16", "float", "bool", "rgb", "rgba", "chw"],
)
def test_numpy_inputs(make, reference: np.ndarray) -> None:
    img = load_image(make(reference))
    assert img.mode == "L" and img.size == (reference.shape[1], reference.shape[0])
    assert similar(np.asarray(img), reference) > 0.9
    assert preprocess(make(reference)).shape == preprocess(reference).shape


# ---------------------------------------------------------------------------------------------------
# Broken and hostile inputs
# ---------------------------------------------------------------------------------------------------


def _png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height, with one small IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_truncated_images_are_refused(printed: Path, tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = printed.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)
    jpeg = io.BytesIO()
    Image.open(printed).convert("RGB").save(jpeg, "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        load_image(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\\frac{1}{2} is a formula, not a picture\n", "not an image"),
        (
            b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
            "PDF is not supported",
        ),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG is not supported"),
        (bytes(range(256)) * 4, "not an image"),
    ],
    ids=["zero_bytes", "text", "pdf", "svg", "binary"],
)
def test_non_images_are_refused(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "formula.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)
    if content:
        with pytest.raises(ImageError, match=message):
            load_image(content)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_huge_declared_size_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header(30000, 30000))
    assert path.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(ImageError, match="too large|pixels"):
        load_image(path)
    # Below PIL's own bomb limit but above ours: our check, still before decoding.
    path.write_bytes(_png_with_header(9000, 7000))
    with pytest.raises(ImageError, match="63,000,000 pixels"):
        load_image(path)
    with pytest.raises(ImageError, match="pixels"):
        load_image(_png_with_header(4000, 3000), max_pixels=1_000_000)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (0, 0)])
def test_too_small(size: tuple[int, int], tmp_path: Path) -> None:
    if size == (0, 0):
        with pytest.raises(ImageError, match="too small"):
            load_image(np.zeros((0, 0), np.uint8))
        return
    path = _save(Image.new("L", size, 0), tmp_path / "tiny.png")
    with pytest.raises(ImageError, match="too small"):
        load_image(path)


def test_blank_images_are_refused(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (300, 60), (255, 255, 255)), tmp_path / "white.png")
    with pytest.raises(ImageError, match="blank image"):
        load_image(path)
    with pytest.raises(ImageError, match="blank image"):
        preprocess(np.full((60, 300), 7, np.uint8))
    uneven = np.tile(np.linspace(180, 250, 300).astype(np.uint8), (60, 1))  # lit unevenly, no ink
    with pytest.raises(ImageError, match="blank image"):
        preprocess(uneven)


def test_nan_and_shape_errors() -> None:
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((20, 20), np.nan, np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 20, 20, 3), np.uint8))


# ---------------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------------


def test_preprocess_contract(printed: Path) -> None:
    out = preprocess(load_image(printed))
    assert out.dtype == np.float32 and out.ndim == 2
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert out.shape[0] % CFG.pad_multiple == 0 and out.shape[1] % CFG.pad_multiple == 0
    assert CFG.min_height <= out.shape[0] <= CFG.max_height and out.shape[1] <= CFG.max_width
    m = CFG.margin
    assert out[:m].max() == 0 and out[:, :m].max() == 0  # margin is background
    assert out[m : m + 2].max() > 0 and out[:, m : m + 2].max() > 0  # cropped tight to the margin
    assert preprocess(printed).shape == out.shape  # paths are accepted too


def test_polarity_does_not_matter(reference: np.ndarray) -> None:
    a, b = preprocess(reference), preprocess(255 - reference)
    assert a.shape == b.shape and np.abs(a - b).max() < 0.05


def test_uneven_lighting_is_flattened(reference: np.ndarray) -> None:
    h, w = reference.shape
    light = np.outer(np.linspace(0.6, 1.0, h), np.linspace(0.7, 1.0, w))  # a shadow across the page
    dim = (reference * light).astype(np.uint8)
    a, b = preprocess(reference), preprocess(dim)
    assert a.shape == b.shape
    assert similar(a, b) > 0.9


def test_clamped_to_max_size(reference: np.ndarray) -> None:
    wide = np.hstack([reference] * 6)
    out = preprocess(wide)
    assert out.shape[1] <= CFG.max_width and out.shape[1] >= CFG.max_width - CFG.pad_multiple
    tall = np.vstack([reference] * 8)
    assert preprocess(tall).shape[0] <= CFG.max_height


def test_same_formula_at_two_resolutions(reference: np.ndarray) -> None:
    h, w = reference.shape
    heights = [
        content_height(preprocess(cv2.resize(reference, (w * f, h * f), interpolation=cv2.INTER_CUBIC)))
        for f in (2, 3)
    ]
    heights.append(content_height(preprocess(reference)))
    assert max(heights) / min(heights) < 1.15, heights


def _render(latex: str, dpi: int, workdir: Path) -> Path:
    tex = workdir / "f.tex"
    tex.write_text(
        "\\documentclass[12pt]{article}\\usepackage{amsmath}\\pagestyle{empty}\\begin{document}\n"
        f"$\\displaystyle {latex}$\n\\end{{document}}\n"
    )
    subprocess.run(
        ["latex", "-interaction=nonstopmode", "f.tex"], cwd=workdir, check=True, capture_output=True
    )
    out = workdir / f"f{dpi}.png"
    subprocess.run(
        ["dvipng", "-D", str(dpi), "-T", "tight", "-bg", "White", "-o", out.name, "f.dvi"],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return out


def test_tex_renders_at_different_dpi_come_out_alike(tex_available: bool, tmp_path: Path) -> None:
    latex = r"\frac{a+b}{c^{2}}=\sum_{i=1}^{n}x_{i}"
    outs = {dpi: preprocess(_render(latex, dpi, tmp_path)) for dpi in (120, 300)}
    heights = [content_height(o) for o in outs.values()]
    assert max(heights) / min(heights) < 1.15, heights
    glyphs = [glyph_after(o) for o in outs.values()]
    assert all(abs(g / CFG.target_glyph_height - 1) < 0.2 for g in glyphs), glyphs


def test_batch_images() -> None:
    a = np.ones((32, 48), np.float32)
    b = np.full((48, 100), 0.5, np.float32)
    batch, sizes = batch_images([a, b])
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
    assert batch.shape == (2, 1, 48, 112)
    assert sizes == [(32, 48), (48, 100)]
    assert batch[0, 0, :32, :48].min() == 1 and batch[0, 0, 32:].max() == 0 and batch[0, 0, :, 48:].max() == 0
    assert torch.all(batch[1, 0, :48, :100] == 0.5) and batch[1, 0, :, 100:].max() == 0
    with pytest.raises(ValueError):
        batch_images([])


def test_to_pil_shows_dark_ink_on_white(reference: np.ndarray) -> None:
    out = preprocess(reference)
    shown = to_pil(out)
    assert shown.mode == "L" and shown.size == (out.shape[1], out.shape[0])
    pixels = np.asarray(shown)
    assert np.median(pixels) == 255 and pixels.min() < 20
    assert np.array_equal(np.asarray(to_pil(torch.from_numpy(out)[None])), pixels)
