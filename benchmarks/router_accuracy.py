"""How often a model's handwriting router is right, on the validation sets, and what it costs per image.

    python benchmarks/router_accuracy.py [--model DIR] [--n 1000] [--tails [--config configs/router.yaml]]

The router (``texlens.models.router``, trained by ``texlens train --config configs/router.yaml``) never saw
these sets: the cn_math set is in a font no training image uses (Euler), IM2LATEX is the held-back part, and
CROHME 2014 test is the handwritten test set. Prints per set the share called handwritten, the accuracy, and the
router's median time per image (preprocessing excluded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from texlens.data.formats import read_dataset
from texlens.image import ImageError, PreprocessConfig, load_image, preprocess
from texlens.models.router import load_router
from texlens.predictor import resolve_model_dir
from texlens.training import load_config

REPO = Path(__file__).resolve().parents[1]
SETS = (("val_cn_math", False, 0), ("val_im2latex", False, 0), ("val_crohme", True, 0))


def tails(config: str | Path) -> list[tuple[str, bool, int]]:
    """--tails: the held-out tails of the training sets that choose the router's checkpoint (the router config's
    val), for comparing routers without looking at the sets reported above."""
    return [(Path(s.path).name, s.handwritten, s.offset) for s in load_config(config).val]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory holding router.* (default: bundled)")
    parser.add_argument("--data", default=str(REPO / "datasets"), help="folder of the built validation sets")
    parser.add_argument("--n", type=int, default=1000, help="images per set (the first N)")
    parser.add_argument("--tails", action="store_true", help="the training sets' held-out tails instead")
    parser.add_argument(
        "--config",
        default=str(REPO / "configs" / "router.yaml"),
        help="router config whose tails --tails reads",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    model_dir = resolve_model_dir(args.model)
    router = load_router(model_dir)
    if router is None:
        print(f"{model_dir} has no router (router.safetensors, router.json)", file=sys.stderr)
        return 1
    config = PreprocessConfig(**router.config.preprocess)
    print(f"router of {model_dir}, {args.n} images per set" + (" (held-out tails)" if args.tails else ""))
    print(f"{'set':<20} {'images':>7} {'called handwritten':>19} {'accuracy':>9} {'ms / image':>11}")
    for name, handwritten, offset in tails(args.config) if args.tails else SETS:
        folder = Path(args.data) / name
        if not folder.exists():
            print(f"{name:<20} missing (build it with `texlens data build`)")
            continue
        samples = read_dataset(folder)[0][offset : offset + args.n]
        calls, times = [], []
        for sample in samples:
            try:
                pixels = preprocess(load_image(sample.image), config)
            except ImageError:  # a blank image (IM2LATEX has a few) has nothing to route
                continue
            start = time.perf_counter()
            calls.append(router.is_handwritten(pixels))
            times.append((time.perf_counter() - start) * 1000)
        share = float(np.mean(calls))
        accuracy = share if handwritten else 1.0 - share
        print(f"{name:<20} {len(calls):>7} {share:>19.3f} {accuracy:>9.3f} {statistics.median(times):>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
