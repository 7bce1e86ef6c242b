"""Can the model's readings of the unlabeled IM2LATEX-100K training images be trusted as labels?

    python benchmarks/pseudo_label_check.py [--model DIR] [--n 400] [--beam 3]

The 76,322 IM2LATEX-100K training images in ``../shared/data/im2latex100k_unlabeled`` have no formulas. The
usual way to use them is self-training: read each image with the model, render the reading with TeX, and keep
it as a label only where the rendering matches the image. This script measures how well such a check works
where the truth is known: on the labeled training part of the IM2LATEX validation images
(``datasets/train_im2latex_real``, never a reported figure). For each beam candidate it

- renders the candidate and the true formula with TeX; the candidate is *right* if both render to the same pixels
  (``texlens.metrics.image_matches``, the eval's image match);
- compares the candidate's rendering with the image itself: the rendering is cropped to its ink, scaled to the
  image's ink box (rejecting candidates whose box differs by more than ``--size-tolerance``), both are made
  binary, a pixel differs if the other side has no ink within one pixel, and the score is the largest number of
  differing pixels in any 7 x 7 window (a wrong glyph makes a dense blob, rasterisation noise does not);
- also records the candidate's smallest token probability.

It prints, for a grid of thresholds, how many candidates the check would accept and how many of those are right
(precision) and what share of the right ones it keeps (recall). Self-training needs a precision near 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from texlens.data.formats import read_dataset
from texlens.data.render import render_many_pixels
from texlens.image import ImageError, load_image
from texlens.metrics import _ink_crop, image_matches
from texlens.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
RENDER_DPI = 400


def local_difference(image: np.ndarray, rendering: np.ndarray, scale: float, size_tolerance: float) -> float:
    """Largest count of differing pixels in a 7 x 7 window; inf if the ink boxes' sizes disagree."""
    real = _ink_crop(image)
    grey = np.asarray(rendering, dtype=np.float32) / 255.0
    rows, cols = np.flatnonzero((grey < 0.5).any(1)), np.flatnonzero((grey < 0.5).any(0))
    if real.size == 0 or rows.size == 0:
        return float("inf")
    grey = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = real.shape
    if max(abs(grey.shape[0] * scale - h) / h, abs(grey.shape[1] * scale - w) / w) > size_tolerance:
        return float("inf")
    drawn = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA) < 0.8
    kernel = np.ones((3, 3), np.uint8)
    near_real = cv2.dilate(real.astype(np.uint8), kernel).astype(bool)
    near_drawn = cv2.dilate(drawn.astype(np.uint8), kernel).astype(bool)
    differs = ((real & ~near_drawn) | (drawn & ~near_real)).astype(np.float32)
    return float(cv2.boxFilter(differs, -1, (7, 7), normalize=False, borderType=cv2.BORDER_CONSTANT).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: bundled)")
    parser.add_argument("--data", default=str(REPO / "datasets" / "train_im2latex_real"))
    parser.add_argument("--n", type=int, default=400, help="images to check")
    parser.add_argument("--beam", type=int, default=3, help="beam width; every distinct candidate is checked")
    parser.add_argument("--size-tolerance", type=float, default=0.08, help="relative ink-box size difference")
    args = parser.parse_args()

    samples, images = [], []
    for sample in read_dataset(args.data)[0][: args.n]:
        try:
            images.append(np.asarray(load_image(sample.image), dtype=np.float32) / 255.0)
        except ImageError:  # a blank image (IM2LATEX has a few) has no formula to check
            continue
        samples.append(sample)
    if not samples:
        print(f"{args.data}: no samples (build it with `texlens data build`)", file=sys.stderr)
        return 1
    predictor = Predictor(args.model, backend="onnx-int8", num_threads=1)
    candidates: list[tuple[int, str, float]] = []  # (sample, latex, smallest token probability)
    for i, p in enumerate(predictor.predict_paths([s.image for s in samples], beam=args.beam)):
        if p.error is None:
            candidates.append((i, p.latex, min(p.token_confidences, default=0.0)))
            candidates.extend(
                (i, latex, 0.0) for latex, _ in p.alternatives
            )  # no per-token figures for these

    right = np.array(
        image_matches([c for _, c, _ in candidates], [samples[i].latex for i, _, _ in candidates])
    )
    truths = render_many_pixels([s.latex for s in samples], dpi=RENDER_DPI)
    # The image's scale against a 400-dpi rendering, from the true formulas (the median ink-box width ratio).
    ratios = [
        _ink_crop(images[i]).shape[1] / _ink_crop(t).shape[1]
        for i, t in enumerate(truths)
        if t is not None and _ink_crop(t).size and _ink_crop(images[i]).size
    ]
    scale = float(np.median(ratios))
    renderings = render_many_pixels([c for _, c, _ in candidates], dpi=RENDER_DPI)
    score = np.array(
        [
            local_difference(images[i], r, scale, args.size_tolerance) if r is not None else np.inf
            for (i, _, _), r in zip(candidates, renderings, strict=True)
        ]
    )
    min_p = np.array([p for _, _, p in candidates])
    print(
        f"{len(samples)} images, {len(candidates)} candidates, {int(right.sum())} right "
        f"({len({i for (i, _, _), r in zip(candidates, right, strict=True) if r})} images with a right one); "
        f"image scale {scale:.4f} of {RENDER_DPI} dpi"
    )
    print(
        f"{'max window diff':>16} {'min token p':>12} {'accepted':>9} {'right':>6} {'precision':>10} {'recall':>7}"
    )
    for limit in (0, 2, 4, 8, np.inf):
        for floor in (0.0, 0.3, 0.5, 0.7):
            keep = (score <= limit) & (min_p >= floor) if floor > 0 else score <= limit
            hits = int((keep & right).sum())
            print(
                f"{limit:>16} {floor:>12} {int(keep.sum()):>9} {hits:>6} "
                f"{hits / max(int(keep.sum()), 1):>10.3f} {hits / max(int(right.sum()), 1):>7.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
