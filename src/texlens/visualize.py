"""Attention maps a person can look at: which part of the image each output token came from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from texlens.predictor import Prediction

__all__ = ["save_attention_map"]

# Panels beyond this many tokens make a figure nobody can read; the rest are left out (the title says so).
MAX_PANELS = 96


def _display_pixels(image: np.ndarray | Image.Image) -> np.ndarray:
    """An image as float (H, W) ink = 1 on 0, the way the model saw it."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.mean(-1)
    if array.dtype == np.uint8:  # a grey picture: dark ink on light paper
        return 1.0 - array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def save_attention_map(
    prediction: Prediction, out_png: str | Path, image: np.ndarray | Image.Image | None = None
) -> Path:
    """Draw the preprocessed image once per output token with that token's attention as a heat map (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if prediction.attention is None or len(prediction.attention) == 0:
        raise ValueError("the prediction holds no attention; predict with attention=True")
    source = image if image is not None else prediction.pixels
    if source is None:
        raise ValueError("no image to draw on: pass image=... or predict with attention=True")
    pixels = _display_pixels(source)
    height, width = pixels.shape
    maps = np.asarray(prediction.attention, dtype=np.float32)
    tokens = list(prediction.tokens)
    confidences = list(prediction.token_confidences) or [math.nan] * len(tokens)
    shown = min(len(tokens), len(maps), MAX_PANELS)

    # Panels keep the image's aspect; columns are chosen so the whole grid is roughly as wide as tall.
    panel_w = float(np.clip(width / 90.0, 2.0, 6.0))
    panel_h = panel_w * height / width + 0.45  # + caption
    cols = max(1, min(shown + 1, round(math.sqrt((shown + 1) * panel_h / panel_w))))
    rows = math.ceil((shown + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_w, rows * panel_h), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    extent = (0, width, height, 0)
    colormap = plt.get_cmap("jet")
    first = axes.flat[0]
    first.imshow(1.0 - pixels, cmap="gray", vmin=0, vmax=1, extent=extent)
    first.set_title("input", fontsize=9, parse_math=False)
    for i in range(shown):
        ax = axes.flat[i + 1]
        heat = maps[i] / max(float(maps[i].max()), 1e-12)
        overlay = colormap(heat)
        overlay[..., 3] = 0.7 * heat  # where the token did not look, the image shows through
        ax.imshow(1.0 - pixels, cmap="gray", vmin=0, vmax=1, extent=extent)
        # Each attention cell covers a block of pixels; bilinear interpolation spreads it over that block.
        ax.imshow(overlay, extent=extent, interpolation="bilinear")
        ax.set_title(f"{i + 1}: {tokens[i]}  ({confidences[i]:.0%})", fontsize=9, parse_math=False)
    title = prediction.latex if len(prediction.latex) < 120 else prediction.latex[:117] + "..."
    if shown < len(tokens):
        title += f"  (first {shown} of {len(tokens)} tokens)"
    fig.suptitle(title, fontsize=10, parse_math=False)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
