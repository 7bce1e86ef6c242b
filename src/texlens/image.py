"""The one image preprocessing used by training, the Predictor, the HTTP API and ONNX export.

``load_image`` decodes whatever a user hands us (file, bytes, PIL image, numpy array) into an 8-bit grey
PIL image and refuses broken or hostile input with an ``ImageError`` that says what to do.
``preprocess`` turns that grey image into what the models read: a float32 (H, W) array in [0, 1] with
ink = 1 and background = 0, cropped to the formula and rescaled so that glyphs have a standard height.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | Path | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

# Decoders we trust with user input. Formats without a reliable signature (TGA) or that run external
# programs (EPS runs Ghostscript) are left out on purpose.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "WEBP", "GIF", "TIFF", "PPM", "JPEG2000", "AVIF", "ICO")

# Grey levels: an image whose darkest and lightest parts differ by less than this holds no ink.
MIN_CONTRAST = 24
# Both sides must have at least this many pixels; 1 x N images carry no formula.
MIN_SIDE = 2


class ImageError(ValueError):
    """The input is not a usable picture of a formula; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How ``preprocess`` crops, scales and pads; the defaults are what the shipped models were trained with."""

    # Typical glyph height in output pixels. 9.4 keeps IM2LATEX-100K images (pdflatex renders, downsampled)
    # at their native scale: the median estimate over its 8,472 non-blank validation images is 9.44.
    target_glyph_height: float = 9.4
    max_height: int = 192
    max_width: int = 1024
    min_height: int = 32
    min_width: int = 32
    pad_multiple: int = 16
    margin: int = 4
    # Tiny inputs (one small symbol) are not blown up beyond this factor: the estimate is unreliable there.
    max_upscale: float = 4.0
    # Glyph height for handwriting (None = the same as print). Training reads sets marked ``handwritten`` at
    # it; the Predictor reads an image at it when the model's router (texlens.models.router) calls the image
    # handwritten. Handwriting shrunk to the printed scale loses its small subscripts.
    handwriting_glyph_height: float | None = None

    def __post_init__(self) -> None:
        for name in ("target_glyph_height", "handwriting_glyph_height"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of pixels, not {value!r}")

    def zoomed(self, factor: float) -> PreprocessConfig:
        """This config with glyphs ``factor`` times as high (the handwriting height too)."""
        hw = self.handwriting_glyph_height
        return replace(
            self,
            target_glyph_height=self.target_glyph_height * factor,
            handwriting_glyph_height=None if hw is None else hw * factor,
        )

    def for_handwriting(self) -> PreprocessConfig:
        """This config with the handwriting glyph height as the target (itself if there is none)."""
        if self.handwriting_glyph_height is None:
            return self
        return replace(self, target_glyph_height=float(self.handwriting_glyph_height))


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def load_image(source: ImageSource, *, max_pixels: int = 50_000_000) -> Image.Image:
    """Decode a path, bytes, file object, PIL image or numpy array into a grey ("L") PIL image."""
    if isinstance(source, Image.Image):
        _check_declared_size(source.size, max_pixels)
        grey = _pil_to_grey(source)
    elif isinstance(source, np.ndarray):
        grey = Image.fromarray(array_to_grey(source, max_pixels=max_pixels))
    else:
        grey = _decode(source, max_pixels)
    _check_content(grey)
    return grey


def _decode(source: Any, max_pixels: int) -> Image.Image:
    """Open, size-check, fully decode and convert an encoded image."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"file not found: {path}")
        if path.is_dir():
            raise ImageError(f"{path}: a folder, not an image file")
        if not path.is_file():
            raise ImageError(f"not a file: {path}")
        data = path.read_bytes()
        name = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "image bytes"
    elif hasattr(source, "read"):
        data = source.read()
        name = getattr(source, "name", "image stream")
    else:
        raise ImageError(
            f"cannot read an image from a {type(source).__name__}; give a path, bytes or an array"
        )
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes); re-export or re-download it")
    try:
        # A declared size above PIL's own limit raises before any pixel is decoded; make the warning an error too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_available_formats())
    except UnidentifiedImageError:
        raise ImageError(f"{name}: {_describe_non_image(data)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{name}: image is too large to decode safely ({exc}); crop or downscale it"
        ) from None
    except Exception as exc:  # malformed headers raise all sorts (SyntaxError, struct.error, ...)
        raise ImageError(f"{name}: corrupt image header ({exc}); re-export the image as PNG") from None
    with img:
        _check_declared_size(img.size, max_pixels, name)
        try:
            img.load()  # force the full decode so truncated/corrupt data fails here, not later
        except Exception as exc:
            raise ImageError(
                f"{name}: corrupt or truncated {img.format} image ({exc}); re-export or re-download it"
            ) from None
        try:
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
        except Exception:  # broken EXIF must not lose an otherwise good image
            pass
        grey = _pil_to_grey(img)
        return grey.copy() if grey is img else grey  # closing the file must not invalidate the result


def image_files(folder: str | Path) -> list[Path]:
    """The files directly in ``folder`` whose suffix names a format texlens reads (.png, .jpg, ...), by name."""
    formats = set(_available_formats())
    suffixes = {ext for ext, fmt in Image.registered_extensions().items() if fmt in formats}
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _available_formats() -> list[str]:
    """The allowed formats that this Pillow build can open (AVIF, JPEG2000 depend on how it was built)."""
    Image.init()
    return [name for name in ALLOWED_FORMATS if name in Image.OPEN]


def _describe_non_image(data: bytes) -> str:
    """Say what a file that PIL could not identify seems to be."""
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF"):
        return "PDF is not supported, export the page as PNG (e.g. `pdftoppm -png -r 200 file.pdf out`)"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "PostScript/EPS is not supported, export the formula as PNG"
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG is not supported, export the formula as PNG"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF is not supported, convert the photo to PNG or JPEG"
    try:
        head.decode("utf-8")
        return "not an image: the file holds text; give a PNG, JPEG, BMP, WebP, GIF or TIFF image"
    except UnicodeDecodeError:
        return f"not an image or an unsupported format; supported: {', '.join(ALLOWED_FORMATS)}"


def _check_declared_size(size: tuple[int, int], max_pixels: int, name: str = "image") -> None:
    """Refuse images too small to hold a formula or too large to decode safely, before decoding."""
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; crop it to the formula or downscale it"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name}: image too small ({width}x{height} pixels); it cannot hold a formula")


def _check_content(grey: Image.Image) -> None:
    """Refuse a grey image with no ink: a single flat colour (or nearly)."""
    low, high = grey.getextrema()
    if high - low < MIN_CONTRAST:
        raise ImageError(f"blank image: no ink found (grey levels {low}..{high}); is this the right file?")


def _pil_to_grey(img: Image.Image) -> Image.Image:
    """Any PIL mode to "L": alpha composited over white, 16-bit/float scaled to 8 bits, palettes expanded."""
    mode = img.mode
    if mode == "L":
        return img
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa"):
        return Image.fromarray(array_to_grey(np.asarray(img.convert("RGBA"))))
    if mode.startswith("I") or mode == "F":
        # PIL's own I;16 -> L conversion clips at 255 instead of scaling, which makes 16-bit scans white.
        return Image.fromarray(array_to_grey(np.asarray(img)))
    if mode in ("1", "RGB"):
        return img.convert("L")
    return img.convert("RGB").convert("L")  # CMYK, YCbCr, LAB, HSV


def array_to_grey(array: Any, *, max_pixels: int = 50_000_000) -> np.ndarray:
    """A numpy array (H,W), (H,W,1|2|3|4) or channel-first, of any numeric dtype, to a uint8 grey array."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first, e.g. a (1, H, W) tensor
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ImageError(
            f"array of shape {array.shape} is not an image; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    _check_declared_size((array.shape[1], array.shape[0]), max_pixels, "array")
    pixels = _to_uint8(array)
    if pixels.ndim == 2:
        return np.ascontiguousarray(pixels)
    if pixels.shape[-1] == 2:
        grey, alpha = pixels[..., 0], pixels[..., 1]
    else:
        rgb = np.ascontiguousarray(pixels[..., :3])
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if pixels.shape[-1] == 3:
            return grey
        alpha = pixels[..., 3]
    # Composite over white: transparent regions are paper.
    a = alpha.astype(np.uint16)
    return ((grey.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values to uint8: bool True = white, floats in [0, 1] scaled, wider data stretched to its range."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError("array holds NaN or infinite values; it is not an image")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(array).astype(np.uint8)
        return _stretch(array, low, high)
    if array.dtype.kind in "ui":
        if array.size == 0:
            return array.astype(np.uint8)
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        # 16-bit scans, 12-bit sensor data, signed ints: their own range is the meaningful one.
        return _stretch(array, low, high)
    raise ImageError(f"array of dtype {array.dtype} is not an image; use uint8, uint16, float or bool")


def _stretch(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [0, 255]."""
    span = max(high - low, 1e-12)
    return np.round((array.astype(np.float64) - low) * (255.0 / span)).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Analysis: polarity, ink mask, glyph size
# --------------------------------------------------------------------------------------------------


@dataclass
class InkAnalysis:
    """What ``analyse_ink`` found in a grey image."""

    grey: np.ndarray  # uint8, dark ink on a flattened light background
    inverted: bool  # the input was light ink on dark and has been flipped
    threshold: int  # Otsu threshold on ``grey``: ink is grey <= threshold
    background: float  # typical background grey level
    ink: float  # typical ink grey level (a dark percentile of the ink pixels)
    stats: np.ndarray  # connected components of the ink mask: (N, 5) x, y, w, h, area


def analyse_ink(grey: np.ndarray) -> InkAnalysis:
    """Fix polarity, flatten the background, threshold (Otsu) and find the ink's connected components."""
    if grey.dtype != np.uint8 or grey.ndim != 2:
        grey = array_to_grey(grey)
    if min(grey.shape) < MIN_SIDE:
        raise ImageError(
            f"image too small ({grey.shape[1]}x{grey.shape[0]} pixels); it cannot hold a formula"
        )
    threshold = int(cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    inverted = not _background_is_light(grey, threshold)
    if inverted:
        grey = 255 - grey
    grey = flatten_background(grey)
    threshold = int(cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    background = _hist_percentile(hist[threshold + 1 :], 50.0) + threshold + 1
    ink = _hist_percentile(hist[: threshold + 1], 5.0)
    # On noisy paper Otsu sits too close to the background and turns noise into specks of "ink": keep the
    # threshold 3 sigma below the background (sigma from the background's upper half), but above mid-grey.
    sigma = _hist_percentile(hist[threshold + 1 :], 84.0) + threshold + 1 - background
    threshold = int(max(min(threshold, background - 3 * sigma), (background + ink) // 2))
    if hist[: threshold + 1].sum() == 0 or background - ink < MIN_CONTRAST:
        raise ImageError("blank image: no ink found; is this the right file?")
    mask = (grey <= threshold).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return InkAnalysis(grey, inverted, threshold, float(background), float(ink), stats[1:])


def flatten_background(grey: np.ndarray) -> np.ndarray:
    """Divide out uneven paper and lighting (dark ink on light): the background becomes a flat light grey.

    The background is estimated by a grey-level dilation (a max filter removes dark strokes thinner than
    the kernel, a third of the image's smaller side) computed at reduced resolution for speed. On a clean
    render the background is uniform and this changes nothing.
    """
    height, width = grey.shape
    kernel = int(np.clip(min(height, width) / 3, 9, 151))
    factor = max(1, kernel // 9)  # work where the kernel is ~9 pixels wide
    small = grey
    if factor > 1:
        size = (max(1, width // factor), max(1, height // factor))
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    k = max(3, (kernel // factor) | 1)
    background = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    background = cv2.blur(background, (k, k))
    if background.shape != grey.shape:
        background = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    if int(background.min()) >= 250:
        return grey  # already flat white: skip the division
    return cv2.divide(grey, np.maximum(background, 1), scale=255)


def _background_is_light(grey: np.ndarray, threshold: int) -> bool:
    """Decide polarity: ink is the minority tail of the histogram, far from the median (the background).

    Uneven light can push a whole border below Otsu's threshold, so the border only decides when the
    histogram is ambiguous (ink covering about half the image).
    """
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel()
    low, median, high = (_hist_percentile(hist, q) for q in (0.5, 50.0, 99.5))
    dark_tail, light_tail = median - low, high - median
    if abs(dark_tail - light_tail) > 0.25 * max(high - low, 1):
        return dark_tail > light_tail
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    light = float(np.mean(border > threshold))
    if light >= 0.6:
        return True
    if light <= 0.4:
        return False
    return float(np.mean(grey > threshold)) >= 0.5


def _hist_percentile(hist: np.ndarray, q: float) -> int:
    """The q-th percentile (0..100) of the values counted in a histogram (bin index = value)."""
    total = int(hist.sum())
    if total == 0:
        return 0
    return int(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))


def _ramp(value: np.ndarray, centre: float, width: float) -> np.ndarray:
    """1 well below centre, 0 well above, linear over +-width/2: a soft `value < centre`."""
    return np.clip((centre + width / 2 - value) / width, 0.0, 1.0)


def glyph_height_from_stats(stats: np.ndarray) -> float:
    """Typical glyph height (pixels) from connected-component stats (x, y, w, h, area).

    Components that say nothing about glyph height get little or no weight: dots (much smaller than the
    typical component), bars (fraction lines, minus: much wider than tall) and tall thin strokes (big
    delimiters). The weights are soft so that a glyph near a limit does not flip in or out between two
    resolutions of the same formula. The estimate is the weighted mean of the heights between the 30th and
    80th weighted percentiles: ordinary letters and digits, neither scripts nor big operators. Not weighted
    by ink, which would let one large bracket of a matrix dominate. See benchmarks/preprocess_speed.py.
    """
    if len(stats) == 0:
        return 0.0
    widths = stats[:, 2].astype(np.float64)
    heights = stats[:, 3].astype(np.float64)
    sizes = np.maximum(widths, heights)
    # The reference "typical component" size ignores specks of one or two pixels (noise), however many.
    solid = np.sort(sizes[stats[:, 4] > 2]) if (stats[:, 4] > 2).any() else np.sort(sizes)
    reference = solid[(3 * (len(solid) - 1)) // 4]
    weights = (
        (1.0 - _ramp(sizes / reference, 0.35, 0.28))  # dots and specks
        * _ramp(widths / heights, 2.5, 1.5)  # bars
        * _ramp(heights / widths, 4.0, 2.4)  # big delimiters, long strokes
    )
    if weights.sum() <= 0:
        # Only bars, dots or strokes ("-", "=", "...", "|"): a glyph is about as tall as these are long.
        return float(np.median(sizes))
    order = np.argsort(heights, kind="stable")
    heights, weights = heights[order], weights[order] / weights.sum()
    upper = np.cumsum(weights)
    # Each component covers [upper - weight, upper] of the distribution; take its overlap with [0.3, 0.8].
    overlap = np.clip(np.minimum(upper, 0.8) - np.maximum(upper - weights, 0.3), 0.0, None)
    if overlap.sum() <= 0:
        return float(np.average(heights, weights=weights))
    return float(np.average(heights, weights=overlap))


def estimate_glyph_height(image: ImageSource) -> float:
    """Typical glyph height, in pixels, of the formula in an image (any polarity)."""
    return glyph_height_from_stats(analyse_ink(_as_grey_array(image)).stats)


def normalize_polarity(image: ImageSource) -> np.ndarray:
    """The image as uint8 grey with dark ink on a light background (flipped if it was light on dark)."""
    return analyse_ink(_as_grey_array(image)).grey


def _as_grey_array(image: ImageSource) -> np.ndarray:
    """Any accepted input as a uint8 (H, W) array."""
    if isinstance(image, np.ndarray):
        return array_to_grey(image)
    if isinstance(image, Image.Image):
        return np.asarray(_pil_to_grey(image))
    return np.asarray(load_image(image))


# --------------------------------------------------------------------------------------------------
# Preprocessing and batching
# --------------------------------------------------------------------------------------------------


def preprocess(image: ImageSource, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Image -> float32 (H, W) in [0, 1], ink = 1: polarity fixed, cropped, glyphs scaled to a standard size, padded."""
    return InkCrop.of(image).scaled(cfg)


@dataclass(frozen=True)
class InkCrop:
    """An image's ink, found once: ``InkCrop.of(image).scaled(cfg)`` is ``preprocess(image, cfg)``, and further
    ``scaled`` calls give other scales of it without looking for the ink again."""

    crop: np.ndarray  # the grey source pixels around the ink
    glyph: float  # their typical glyph height (source pixels)
    info: InkAnalysis

    @classmethod
    def of(cls, image: ImageSource) -> InkCrop:
        """Find the ink of an image (raises ImageError for a blank or unusable one)."""
        info = analyse_ink(_as_grey_array(image))
        stats = info.stats
        x0, y0 = int(stats[:, 0].min()), int(stats[:, 1].min())
        x1, y1 = int((stats[:, 0] + stats[:, 2]).max()), int((stats[:, 1] + stats[:, 3]).max())
        # One extra source pixel keeps the light anti-aliased fringe that Otsu leaves outside the mask.
        height, width = info.grey.shape
        x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width), min(y1 + 1, height)
        return cls(info.grey[y0:y1, x0:x1], glyph_height_from_stats(stats), info)

    def scaled(self, cfg: PreprocessConfig) -> np.ndarray:
        """The model's view under ``cfg``: float32 (H, W), ink = 1."""
        return _scaled(self.crop, self.glyph, self.info, cfg)


def _scaled(crop: np.ndarray, glyph: float, info: InkAnalysis, cfg: PreprocessConfig) -> np.ndarray:
    """The cropped grey content with its glyphs scaled to ``cfg``'s height, ink = 1, on padded blank."""
    scale = cfg.target_glyph_height / max(glyph, 1.0)
    scale = min(scale, cfg.max_upscale)
    pad = max(cfg.pad_multiple, 1)
    room_h = (cfg.max_height // pad) * pad - 2 * cfg.margin
    room_w = (cfg.max_width // pad) * pad - 2 * cfg.margin
    scale = min(scale, room_h / crop.shape[0], room_w / crop.shape[1])
    new_h = min(max(1, round(crop.shape[0] * scale)), room_h)
    new_w = min(max(1, round(crop.shape[1] * scale)), room_w)
    if (new_h, new_w) != crop.shape:
        shrink = new_h < crop.shape[0] or new_w < crop.shape[1]
        crop = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)

    # Background -> 0, ink -> 1, whatever the paper and pen looked like.
    contrast = max(info.background - info.ink, float(MIN_CONTRAST))
    content = np.clip((info.background - crop.astype(np.float32)) * (1.0 / contrast), 0.0, 1.0)
    # Shrinking thin strokes (a fine pen photographed large) leaves them faint: bring the darkest back to 1.
    peak = float(content.max())
    if 0.0 < peak < 0.9:
        content *= 1.0 / max(peak, MIN_CONTRAST / 255.0)

    out_h = _round_up(max(new_h + 2 * cfg.margin, cfg.min_height), pad)
    out_w = _round_up(max(new_w + 2 * cfg.margin, cfg.min_width), pad)
    out = np.zeros((out_h, out_w), dtype=np.float32)
    out[cfg.margin : cfg.margin + new_h, cfg.margin : cfg.margin + new_w] = content
    return out


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def batch_images(arrays: list[np.ndarray], pad_multiple: int = 16) -> tuple[Any, list[tuple[int, int]]]:
    """Stack preprocessed (H, W) arrays into a FloatTensor [B, 1, H, W] padded with 0, plus each (h, w)."""
    import torch  # here, so that decoding and preprocessing work without loading torch

    if not arrays:
        raise ValueError("batch_images needs at least one image")
    sizes = [(int(a.shape[-2]), int(a.shape[-1])) for a in arrays]
    height = _round_up(max(h for h, _ in sizes), pad_multiple)
    width = _round_up(max(w for _, w in sizes), pad_multiple)
    batch = torch.zeros((len(arrays), 1, height, width), dtype=torch.float32)
    for i, (array, (h, w)) in enumerate(zip(arrays, sizes, strict=True)):
        batch[i, 0, :h, :w] = torch.as_tensor(np.asarray(array, dtype=np.float32).reshape(h, w))
    return batch, sizes


def to_pil(array: Any) -> Image.Image:
    """A preprocessed array/tensor (float, ink = 1) to a PIL image for display: dark ink on white.

    uint8 arrays are taken as grey images already (ink dark) and shown as they are.
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    array = array.reshape(array.shape[-2:]) if array.ndim > 2 else array
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    pixels = np.round((1.0 - np.clip(array.astype(np.float32), 0.0, 1.0)) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels)
