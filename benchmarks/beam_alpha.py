"""Choose beam search's length penalty on a tuning split that no reported figure uses.

    python benchmarks/beam_alpha.py [--model DIR] [--n 300] [--beam 3] [--alphas 0,0.5,1.0,mean]

The tuning images are IM2LATEX held-back validation images from number 2,000 on and cn_math validation images
(Euler font) from number 5,000 on: the model card evaluates the first 1,000 and 2,000 of these sets and the
compile-rate benchmark the first 500 of IM2LATEX and CROHME 2014 test, so none of them is tuned on. Prints exact
match and edit similarity of greedy search and of beam search with each alpha (GNMT's ((5 + L) / 6) ** alpha;
0 ranks by total log-probability, ``mean`` by mean token log-probability).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from texlens.data.formats import read_dataset
from texlens.metrics import exact_match, mean_edit_similarity
from texlens.predictor import Predictor, resolve_model_dir

REPO = Path(__file__).resolve().parents[1]
TUNING = {
    "im2latex held back": ("datasets/val_im2latex", 2000),
    "cn_math (euler)": ("datasets/val_cn_math", 5000),
}


def main() -> None:
    """Decode the tuning split greedily and with each alpha; print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model directory or bundled name (default: bundled)")
    parser.add_argument("--n", type=int, default=300, help="images per tuning set")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--alphas", default="0,0.5,1.0,mean", help="comma-separated alphas to compare")
    parser.add_argument("--datasets", default=str(REPO / "datasets"), help="where `texlens data build` wrote")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    predictor = Predictor(resolve_model_dir(args.model))
    alphas: list[float | str] = [a if a == "mean" else float(a) for a in args.alphas.split(",")]
    table = Table(title=f"Beam {args.beam} length penalty on the tuning split ({args.n} images per set)")
    for column in ("data", "decoding", "exact match", "edit similarity", "s / image"):
        table.add_column(column, justify="right")
    for name, (folder, skip) in TUNING.items():
        path = Path(args.datasets) / Path(folder).name
        if not path.is_dir():
            sys.exit(
                f"{path}: not found; run `texlens data build --shared ../shared/data --out datasets` first"
            )
        samples = read_dataset(path)[0][skip : skip + args.n]
        if not samples:
            sys.exit(f"{path}: no samples from number {skip} on; run `texlens data build` first")
        refs = [s.latex.split() for s in samples]
        for label, beam, alpha in [("greedy", 1, 1.0), *((f"beam alpha={a}", args.beam, a) for a in alphas)]:
            predictor.length_penalty = alpha
            start = time.perf_counter()
            with console.status(f"{name}: {label}"):
                tokens = [p.tokens for p in predictor.predict_paths([s.image for s in samples], beam=beam)]
            seconds = (time.perf_counter() - start) / len(samples)
            exact, edit = exact_match(tokens, refs), mean_edit_similarity(tokens, refs)
            table.add_row(name, label, f"{exact:.1%}", f"{edit:.3f}", f"{seconds:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
