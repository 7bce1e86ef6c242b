"""Draw the bundled handwritten example (``src/texlens/examples/handwritten.png``) from pen strokes.

The strokes below were laid out by hand, point by point, the way a mouse or finger on the UI's canvas draws a
formula: white ink on black, about 3 px wide, as CROHME's rendered ink traces look. Each glyph is a list of
strokes in a 0..1 box; a little seeded jitter keeps the lines from looking typeset.

    python scripts/draw_handwritten_example.py        # rewrites src/texlens/examples/handwritten.png
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "src" / "texlens" / "examples" / "handwritten.png"


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 14) -> list:
    """Points along an elliptic arc (angles in degrees, 0 = right, counter-clockwise on paper)."""
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / (n - 1))),
            cy - ry * math.sin(math.radians(start + (end - start) * i / (n - 1))),
        )
        for i in range(n)
    ]


GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "y": [[(0.05, 0.3), (0.25, 0.55), (0.45, 0.68)], [(0.75, 0.3), (0.5, 0.7), (0.3, 1.05), (0.15, 1.15)]],
    "=": [[(0.05, 0.45), (0.95, 0.43)], [(0.05, 0.72), (0.95, 0.7)]],
    "x": [[(0.05, 0.3), (0.5, 0.65), (0.9, 1.0)], [(0.85, 0.3), (0.45, 0.65), (0.1, 1.0)]],
    "2": [arc(0.45, 0.28, 0.35, 0.22, 160, -40) + [(0.35, 0.65), (0.05, 1.0), (0.95, 0.98)]],
    "+": [[(0.1, 0.62), (0.9, 0.6)], [(0.5, 0.25), (0.52, 0.98)]],
    "1": [[(0.2, 0.2), (0.55, 0.0), (0.55, 1.0)]],
}

# (glyph, x, y, width, height) in pixels of the final image; the superscript 2 sits small and high.
LAYOUT = [
    ("y", 20, 30, 40, 60),
    ("=", 80, 30, 45, 60),
    ("x", 145, 30, 45, 60),
    ("2", 195, 8, 26, 36),
    ("+", 240, 30, 50, 60),
    ("1", 310, 28, 30, 62),
]


def draw(seed: int = 7, width: int = 360, height: int = 110, pen: int = 3) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("L", (width, height), 0)
    canvas = ImageDraw.Draw(image)
    for glyph, x0, y0, w, h in LAYOUT:
        for stroke in GLYPHS[glyph]:
            points = [
                (x0 + px * w + rng.uniform(-1.2, 1.2), y0 + py * h + rng.uniform(-1.2, 1.2))
                for px, py in stroke
            ]
            canvas.line(points, fill=255, width=pen, joint="curve")
            for px, py in (points[0], points[-1]):  # round pen ends
                canvas.ellipse((px - pen / 2, py - pen / 2, px + pen / 2, py + pen / 2), fill=255)
    return image


if __name__ == "__main__":
    draw().save(OUT)
    print(OUT)
