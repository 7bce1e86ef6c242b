"""Training augmentation: make clean renders and CROHME scans look like what users photograph and scan.

Works on the grey uint8 image before ``texlens.image.preprocess`` (dark ink on white; light-on-dark input
is flipped first). Magnitudes are relative to the formula's own glyph height, so the same settings are
gentle on a 100-dpi render and still visible on a 300-dpi one. Written with OpenCV/numpy rather than
albumentations: its transforms take fixed pixel ranges at construction time, while here blur, stroke and
elastic sizes follow each image's glyph height, and one numpy Generator keeps runs reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from texlens.image import (
    ImageError,
    ImageSource,
    PreprocessConfig,
    analyse_ink,
    array_to_grey,
    glyph_height_from_stats,
    load_image,
    preprocess,
    to_pil,
)

Augment = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (at strength 1) and largest magnitudes (scaled by strength) of each perturbation."""

    stroke_p: float = 0.35  # thinner or thicker strokes (pen, scanner threshold, rendering)
    # Largest change of the ink's weight, as a fraction of it. Bold type carries about 45 % more ink than
    # regular (Computer Modern, at any size), so print stays within 15 % and neither passes for the other;
    # handwriting, which has no bold, takes more (HANDWRITING).
    stroke_max: float = 0.15
    geometry_p: float = 0.8  # rotation, anisotropic scale, shear, perspective (content is never cut off)
    rotate_deg: float = 3.0
    scale_jitter: float = 0.08  # x and y scaled independently by 1 +- this
    shear: float = 0.06
    perspective: float = 0.025  # corner displacement as a fraction of the content size
    elastic_p: float = 0.15  # slight rubber-sheet warp, mostly useful for handwriting
    elastic_amplitude: float = 0.06  # displacement as a fraction of the glyph height
    resolution_p: float = 0.25  # downsample and upsample: a low-resolution scan or screenshot
    min_glyph_px: float = 7.0  # never downsample glyphs below this height
    blur_p: float = 0.3
    blur_sigma: float = 0.05  # Gaussian sigma as a fraction of the glyph height
    motion_length: float = 0.12  # motion-blur length as a fraction of the glyph height (a third of blurs)
    paper_p: float = 0.6  # paper tone, smooth texture and uneven light; grey ink
    paper_texture: float = 28.0  # grey levels of smooth background variation
    paper_darkest: float = 195.0  # darkest paper tone
    ink_lightest: float = 65.0  # lightest ink tone
    noise_p: float = 0.4
    noise_std: float = 12.0  # grey levels
    jpeg_p: float = 0.35
    jpeg_quality: int = 25  # lowest JPEG quality
    invert_p: float = 0.05  # light ink on dark ground (blackboard, dark-mode screenshot)
    # Each symbol (connected piece of ink) moved, scaled and turned on its own: how one writer's formula
    # differs from another's. Off by default (printed layout is exact); HANDWRITING turns it on.
    symbols_p: float = 0.0
    symbol_shift: float = 0.1  # largest shift, as a fraction of the glyph height
    symbol_scale: float = 0.12  # largest relative size change
    symbol_rotate_deg: float = 6.0


# For handwriting (``augment_kind: handwriting`` on a training set): symbols jitter independently and the
# rubber-sheet warp comes more often; the rest as for print.
HANDWRITING = AugmentConfig(symbols_p=0.6, elastic_p=0.35, stroke_max=1.0)
# The kinds a training set (``augment_kind``) or ``texlens data contact-sheet --kind`` may name.
AUGMENT_KINDS = {"print": AugmentConfig(), "handwriting": HANDWRITING}


def build_augment(
    strength: float = 1.0, seed: int | None = None, config: AugmentConfig | None = None
) -> Augment:
    """An augmentation callable (grey uint8 (H, W) -> same shape and dtype); strength 0 is the identity."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    return Augmenter(strength, seed, config or AugmentConfig())


class Augmenter:
    """Callable augmentation with its own random generator, re-seeded in each DataLoader worker."""

    def __init__(self, strength: float, seed: int | None, config: AugmentConfig) -> None:
        self.strength = float(strength)
        self.config = config
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._pid = os.getpid()
        self.rng = np.random.default_rng(self.seed)

    def _check_process(self) -> None:
        # Forked DataLoader workers inherit the same generator state; give each its own stream.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            worker = _worker_id()
            self.rng = np.random.default_rng([self.seed, worker if worker is not None else self._pid])

    def _p(self, p: float) -> bool:
        return bool(self.rng.random() < min(1.0, p * self.strength))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Augment one grey image (dark ink on light, or light on dark: flipped first)."""
        image = array_to_grey(image)
        if self.strength == 0:
            return image.copy()
        self._check_process()
        try:
            info = analyse_ink(image)
        except ImageError:
            return image.copy()  # blank: nothing to perturb; preprocess will refuse it
        cfg, s, rng = self.config, self.strength, self.rng
        glyph = max(glyph_height_from_stats(info.stats), 4.0)
        out = info.grey
        background = int(round(info.background))

        if self._p(cfg.symbols_p):
            out = _symbols(out, info.threshold, rng, cfg, s, glyph, background)
        if self._p(cfg.stroke_p):
            out = _stroke_width(out, rng.uniform(-1.0, 1.0) * cfg.stroke_max * s, glyph)
        if self._p(cfg.geometry_p):
            out = _geometry(out, info.stats, rng, cfg, s, background)
        if self._p(cfg.elastic_p):
            out = _elastic(out, rng, cfg.elastic_amplitude * s * glyph, glyph, background)
        # At most one optical degradation: stacked blur and resolution loss would wash low-res glyphs out.
        if self._p(cfg.resolution_p):
            lowest = min(1.0, cfg.min_glyph_px / glyph)
            out = _resample(out, rng.uniform(max(lowest, 1.0 - 0.5 * s), 1.0))
        elif self._p(cfg.blur_p):
            if rng.random() < 1 / 3:
                out = _motion_blur(out, rng, max(2.0, cfg.motion_length * s * glyph))
            else:
                sigma = rng.uniform(0.3, max(0.4, cfg.blur_sigma * s * glyph))
                out = cv2.GaussianBlur(out, (0, 0), sigma)
        if self._p(cfg.paper_p):
            out = _paper(out, rng, cfg, s)
        if self._p(cfg.noise_p):
            std = rng.uniform(2.0, max(2.5, cfg.noise_std * s))
            noise = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(std)
            out = np.clip(out + noise, 0, 255).astype(np.uint8)
        if self._p(cfg.jpeg_p):
            quality = int(rng.integers(max(5, round(95 - (95 - cfg.jpeg_quality) * min(s, 1.5))), 96))
            ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
            out = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if ok else out
        if self._p(cfg.invert_p):
            out = 255 - out
        return np.ascontiguousarray(out, dtype=np.uint8)


def _worker_id() -> int | None:
    """The torch DataLoader worker id, if torch is loaded and this is a worker."""
    import sys

    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return None if info is None else int(info.id)


_KERNEL = np.ones((3, 3), np.uint8)
_STROKE_GAIN = 32.0  # glyph height (px) at which one 3x3 step changes the ink's weight by about 100 %


def _stroke_width(grey: np.ndarray, change: float, glyph: float) -> np.ndarray:
    """Thicker (change > 0) or thinner dark strokes, ``change`` the relative change of the ink's weight.

    A fraction of one 3x3 erode (thicker) or dilate (thinner) is blended in; its share of a stroke is about
    ``_STROKE_GAIN / glyph`` (measured on Computer Modern renderings from 12 to 28 px glyphs: one full step
    adds 2.3x the ink at 12 px and 1.3x at 28 px). Never more than one step.
    """
    amount = float(np.clip(change * glyph / _STROKE_GAIN, -1.0, 1.0))
    morphed = cv2.erode(grey, _KERNEL) if amount > 0 else cv2.dilate(grey, _KERNEL)
    return cv2.addWeighted(grey, 1.0 - abs(amount), morphed, abs(amount), 0.0)


def _symbols(
    grey: np.ndarray,
    threshold: int,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    s: float,
    glyph: float,
    background: int,
) -> np.ndarray:
    """Move, scale and turn each connected piece of ink by its own small random amount, within the canvas.

    Pieces are found on the ink mask grown by one pixel (so the anti-aliased fringe moves with its stroke
    and touching strokes move together) and drawn back darkest-wins. Long pieces (fraction bars, radicals)
    are not scaled and turn only as far as keeps their ends within the shift; specks stay where they are.
    """
    height, width = grey.shape
    mask = cv2.dilate((grey <= threshold).astype(np.uint8), _KERNEL)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = np.full_like(grey, background)
    shift_max = cfg.symbol_shift * s * glyph
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        patch = np.where(labels[y : y + h, x : x + w] == i, grey[y : y + h, x : x + w], background)
        patch = patch.astype(np.uint8)
        size = max(w, h)
        if area < 4 or size < 0.15 * glyph:
            out[y : y + h, x : x + w] = np.minimum(out[y : y + h, x : x + w], patch)
            continue
        long = size > 2.0 * glyph
        scale = 1.0 if long else 1.0 + rng.uniform(-1, 1) * cfg.symbol_scale * s
        angle = rng.uniform(-1, 1) * cfg.symbol_rotate_deg * s
        if long:  # the ends of a long bar move by about size/2 * angle: keep that within the shift
            angle = float(np.clip(angle, -1, 1)) * min(1.0, np.rad2deg(shift_max / (size / 2)))
        dx, dy = rng.uniform(-1, 1, 2) * shift_max
        # Warp the piece about its centre into a canvas large enough for any of these turns and sizes.
        pad = int(np.ceil(0.25 * size + 2))
        src = cv2.copyMakeBorder(patch, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=background)
        centre = (src.shape[1] / 2, src.shape[0] / 2)
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        moved = cv2.warpAffine(
            src, matrix, (src.shape[1], src.shape[0]), flags=cv2.INTER_LINEAR, borderValue=background
        )
        # Place it, shifted, clipped to the canvas (ink that would leave it is kept in by a smaller shift).
        x0 = int(round(np.clip(x - pad + dx, -pad, width - w - pad)))
        y0 = int(round(np.clip(y - pad + dy, -pad, height - h - pad)))
        ox0, oy0 = max(0, x0), max(0, y0)
        ox1, oy1 = min(width, x0 + moved.shape[1]), min(height, y0 + moved.shape[0])
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        region = moved[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
        out[oy0:oy1, ox0:ox1] = np.minimum(out[oy0:oy1, ox0:ox1], region)
    return out


def _geometry(
    grey: np.ndarray,
    stats: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    s: float,
    background: int,
) -> np.ndarray:
    """Rotate, scale, shear and tilt the content, shrinking it if needed so nothing leaves the canvas."""
    height, width = grey.shape
    x0, y0 = stats[:, 0].min(), stats[:, 1].min()
    x1, y1 = (stats[:, 0] + stats[:, 2]).max(), (stats[:, 1] + stats[:, 3]).max()
    cw, ch = float(x1 - x0), float(y1 - y0)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    centre = corners.mean(axis=0)

    angle = np.deg2rad(rng.uniform(-1, 1) * cfg.rotate_deg * s)
    sx, sy = 1.0 + rng.uniform(-1, 1, 2) * cfg.scale_jitter * s
    shear = rng.uniform(-1, 1) * cfg.shear * s
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[sx, shear], [0.0, sy]])
    moved = (corners - centre) @ linear.T
    # Perspective: each corner wanders by a fraction of the content's width (x) and height (y).
    moved += rng.uniform(-1, 1, (4, 2)) * cfg.perspective * s * np.array([cw, ch])
    low, high = moved.min(axis=0), moved.max(axis=0)
    span = np.maximum(high - low, 1.0)
    fit = min(1.0, (width - 1) / span[0], (height - 1) / span[1])
    moved = (moved - low) * fit
    free = np.maximum(np.array([width - 1, height - 1]) - (high - low) * fit, 0.0)
    # Keep the content near where it was; a little shift, never off the canvas.
    target = np.clip(np.array([x0, y0], float) + rng.uniform(-0.5, 0.5, 2) * 0.2 * free, 0.0, free)
    matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), (moved + target).astype(np.float32))
    return cv2.warpPerspective(
        grey,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=background,
    )


def _elastic(
    grey: np.ndarray, rng: np.random.Generator, amplitude: float, glyph: float, background: int
) -> np.ndarray:
    """Smooth random displacement (about a glyph per control point), like the wobble of a hand."""
    height, width = grey.shape
    gh, gw = max(2, round(height / (1.5 * glyph)) + 1), max(2, round(width / (1.5 * glyph)) + 1)
    dx = cv2.resize(
        rng.normal(0, amplitude, (gh, gw)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    dy = cv2.resize(
        rng.normal(0, amplitude, (gh, gw)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        grey, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=background
    )


def _resample(grey: np.ndarray, factor: float) -> np.ndarray:
    """Lose resolution: shrink by factor, then enlarge back to the same shape."""
    height, width = grey.shape
    small = cv2.resize(
        grey, (max(2, round(width * factor)), max(2, round(height * factor))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _motion_blur(grey: np.ndarray, rng: np.random.Generator, length: float) -> np.ndarray:
    """Blur along a random direction (camera shake)."""
    size = int(length) | 1
    kernel = np.zeros((size, size), np.float32)
    angle = rng.uniform(0, np.pi)
    c = (size - 1) / 2
    dx, dy = np.cos(angle) * c, np.sin(angle) * c
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    return cv2.filter2D(grey, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REPLICATE)


def _paper(grey: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, s: float) -> np.ndarray:
    """Recolour: paper tone with a smooth texture and a light gradient under grey ink."""
    height, width = grey.shape
    coverage = 1.0 - grey.astype(np.float32) / 255.0  # 0 paper .. 1 full ink
    paper = 255.0 - rng.uniform(0, 1) * (255.0 - cfg.paper_darkest) * min(1.0, s)
    cells = rng.integers(2, 7, 2)
    texture = cv2.resize(
        rng.normal(0, 1, tuple(cells)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    ramp = np.linspace(-1, 1, width, dtype=np.float32)[None, :] * rng.uniform(-1, 1)
    ramp = ramp + np.linspace(-1, 1, height, dtype=np.float32)[:, None] * rng.uniform(-1, 1)
    field = paper + (0.6 * texture + 0.4 * ramp) * cfg.paper_texture * s
    ink = rng.uniform(0, cfg.ink_lightest * min(1.0, s))
    out = field * (1.0 - coverage) + ink * coverage
    return np.clip(out, 0, 255).astype(np.uint8)


def contact_sheet(
    images: Sequence[ImageSource],
    out_png: Path,
    augment: Augment,
    n_variants: int = 6,
    labels: Sequence[str] | None = None,
    *,
    model_view: bool = True,
    preprocess_config: PreprocessConfig | None = None,
    zoom: int = 2,
) -> Path:
    """Write a PNG grid: per row an original and n augmented variants, as the model sees them.

    With model_view (default) every cell is ``preprocess``-ed (cropped, glyph-scaled, shown enlarged
    zoom times); otherwise the raw augmented grey images are shown. A variant that preprocess refuses is
    drawn as a red cell, so destroyed samples are visible.
    """
    cfg = preprocess_config or PreprocessConfig()
    rows: list[tuple[str, list[Image.Image]]] = []
    for i, source in enumerate(images):
        grey = np.asarray(load_image(source)) if not isinstance(source, np.ndarray) else array_to_grey(source)
        variants = [grey] + [augment(grey) for _ in range(n_variants)]
        cells = [_cell(v, cfg, model_view, zoom) for v in variants]
        label = labels[i] if labels is not None and i < len(labels) else ""
        rows.append((label, cells))

    gap, label_h = 6, 14
    widths = [sum(c.width for c in cells) + gap * (len(cells) + 1) for _, cells in rows]
    heights = [max(c.height for c in cells) + gap + (label_h if label else 0) for label, cells in rows]
    sheet = Image.new("RGB", (max(widths, default=1), sum(heights) + gap), (150, 150, 150))
    draw = ImageDraw.Draw(sheet)
    y = gap
    for (label, cells), row_h in zip(rows, heights, strict=True):
        if label:
            draw.text((gap, y), label[:200], fill=(0, 0, 90))
            y += label_h
        x = gap
        for cell in cells:
            sheet.paste(cell, (x, y))
            x += cell.width + gap
        y += row_h - (label_h if label else 0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png


def _cell(grey: np.ndarray, cfg: PreprocessConfig, model_view: bool, zoom: int) -> Image.Image:
    """One contact-sheet cell: the preprocessed (model) view or the raw grey image, RGB."""
    if not model_view:
        cell = Image.fromarray(grey)
        cell.thumbnail((800, 200))
        return cell.convert("RGB")
    try:
        cell = to_pil(preprocess(grey, cfg))
    except ImageError:
        return Image.new("RGB", (64 * zoom, 32 * zoom), (220, 40, 40))
    return cell.resize((cell.width * zoom, cell.height * zoom), Image.Resampling.NEAREST).convert("RGB")
