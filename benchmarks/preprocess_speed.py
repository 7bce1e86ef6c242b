"""Measure texlens.image on real data: speed, glyph-size estimates, scale factors and output sizes.

    python benchmarks/preprocess_speed.py [--data ../shared/data] [--limit 2000] [--dpi-check]

Prints tables; with --dpi-check it also renders a few formulas with TeX Live at 100-300 dpi and shows
that preprocessing brings them (and CROHME handwriting) to the same glyph height.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from texlens.image import (
    ImageError,
    PreprocessConfig,
    analyse_ink,
    estimate_glyph_height,
    glyph_height_from_stats,
    load_image,
    preprocess,
)

REPO = Path(__file__).resolve().parents[1]
DPI_FORMULAS = [
    r"\frac{a+b}{c^{2}}=\sum_{i=1}^{n}x_{i}",
    r"E=mc^{2}",
    r"\int_{0}^{\infty}e^{-x^{2}}\,dx=\frac{\sqrt{\pi}}{2}",
    r"f(x)=\left(\begin{array}{cc}a&b\\c&d\end{array}\right)",
]


def percentiles(values: list[float]) -> str:
    """p5 / p25 / median / p75 / p95 of a list, as one string."""
    p = np.percentile(np.asarray(values, dtype=np.float64), [5, 25, 50, 75, 95])
    return " / ".join(f"{v:7.2f}" for v in p)


def measure(name: str, files: list[Path], cfg: PreprocessConfig) -> list[float]:
    """Print speed and size statistics for one set of files; return the glyph estimates."""
    glyphs, scales, heights, widths, after, load_ms, prep_ms, refused = [], [], [], [], [], [], [], []
    for path in files:
        t0 = time.perf_counter()
        try:
            image = load_image(path)
            t1 = time.perf_counter()
            out = preprocess(image, cfg)
            t2 = time.perf_counter()
        except ImageError as exc:
            refused.append(f"{path.name}: {exc}")
            continue
        load_ms.append((t1 - t0) * 1000)
        prep_ms.append((t2 - t1) * 1000)
        glyph = estimate_glyph_height(image)
        glyphs.append(glyph)
        scales.append(cfg.target_glyph_height / glyph)
        heights.append(out.shape[0])
        widths.append(out.shape[1])
        after.append(glyph_height_from_stats(analyse_ink((255 - out * 255).astype(np.uint8)).stats))
    print(f"\n## {name}: {len(glyphs)} images ({len(refused)} refused)")
    for line in refused[:5]:
        print(f"   refused {line}")
    print("                          p5 /     p25 /  median /     p75 /     p95")
    print(f"load_image ms        {percentiles(load_ms)}")
    print(f"preprocess ms        {percentiles(prep_ms)}")
    print(f"glyph height (src)   {percentiles(glyphs)}")
    print(f"scale factor         {percentiles(scales)}")
    print(f"glyph height (out)   {percentiles(after)}")
    print(f"output height        {percentiles(heights)}")
    print(f"output width         {percentiles(widths)}")
    clamped = np.mean(np.asarray(widths) >= cfg.max_width) + np.mean(np.asarray(heights) >= cfg.max_height)
    print(f"at max size          {clamped * 100:.1f} %")
    return glyphs


def render(latex: str, dpi: int, workdir: Path) -> Path:
    """Render one formula with latex + dvipng at a dpi (pdflatex look, as IM2LATEX)."""
    tex = workdir / f"f{dpi}.tex"
    tex.write_text(
        "\\documentclass[12pt]{article}\\usepackage{amsmath}\\pagestyle{empty}\\begin{document}\n"
        f"$\\displaystyle {latex}$\n\\end{{document}}\n"
    )
    subprocess.run(
        ["latex", "-interaction=nonstopmode", tex.name], cwd=workdir, check=True, capture_output=True
    )
    png = workdir / f"f{dpi}.png"
    subprocess.run(
        [
            "dvipng",
            "-D",
            str(dpi),
            "-T",
            "tight",
            "-bg",
            "White",
            "-o",
            png.name,
            tex.with_suffix(".dvi").name,
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return png


def dpi_check(cfg: PreprocessConfig) -> None:
    """Render formulas at several dpi; after preprocess their heights and glyph heights should agree."""
    if shutil.which("latex") is None or shutil.which("dvipng") is None:
        print("\n(TeX Live not found: dpi check skipped)")
        return
    print("\n## same formula rendered at several dpi: output height (glyph estimate after preprocess)")
    dpis = [100, 150, 200, 300]
    print("formula".ljust(50) + "".join(f"{d:>14d}" for d in dpis))
    with tempfile.TemporaryDirectory() as tmp:
        for latex in DPI_FORMULAS:
            cells = []
            for dpi in dpis:
                out = preprocess(load_image(render(latex, dpi, Path(tmp))), cfg)
                rows = np.flatnonzero(out.max(axis=1) > 0.5)
                glyph = glyph_height_from_stats(analyse_ink((255 - out * 255).astype(np.uint8)).stats)
                cells.append(f"{rows[-1] - rows[0] + 1:6d} ({glyph:4.1f})")
            print(latex[:48].ljust(50) + "".join(f"{c:>14s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=2000, help="images per set (random sample)")
    parser.add_argument("--dpi-check", action="store_true")
    args = parser.parse_args()
    cfg = PreprocessConfig()
    rng = random.Random(0)
    sets = {
        "IM2LATEX-100K val": sorted((args.data / "im2latex100k" / "images_val").glob("*.png")),
        "CROHME train 2014": sorted((args.data / "crohme" / "train_2014").glob("*.png")),
        "CROHME test 2014": sorted((args.data / "crohme" / "test_2014").glob("*.png")),
        "im2markup sample (full pages)": sorted((args.data / "im2markup_sample" / "images").glob("*.png")),
    }
    print(f"PreprocessConfig: {cfg}")
    for name, files in sets.items():
        if not files:
            print(f"\n## {name}: no files found under {args.data}")
            continue
        rng.shuffle(files)
        limit = args.limit if "pages" not in name else min(args.limit, 200)
        glyphs = measure(name, files[:limit], cfg)
        if name.startswith("IM2LATEX"):
            print(f"-> target_glyph_height that keeps IM2LATEX at scale 1.0: {np.median(glyphs):.2f}")
    if args.dpi_check:
        dpi_check(cfg)


if __name__ == "__main__":
    main()
