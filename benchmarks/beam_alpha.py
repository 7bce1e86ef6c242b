"""Choose beam search's length penalty on a tuning split that no reported figure uses.

    python benchmarks/beam_alpha.py [--model DIR] [--n 300] [--beam 3] [--alphas 0,0.5,1.0,mean]

The tuning images are IM2LATEX held-back validation images from number 2,000 on and cn_math validation images
(Euler font) from number 5,000 on: the model card evaluates the first 1,000 and 2,000 of these sets and the
compile-rate benchmark the first 500 of IM2LATEX and CROHME 2014 test, so none of them is tuned on. Prints exact
match and edit similarity of greedy search and of beam search with each alpha (GNMT's ((5 + L) / 6) ** alpha;
0 ranks by total log-probability, ``mean`` by mean token log-probability).
"""

from __future__ import annotations

import sys
import time

from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.metrics import exact_match, mean_edit_similarity
from texlens.predictor import Predictor, resolve_model_dir


def main() -> None:
    """Decode the tuning split greedily and with each alpha; print the table."""
    parser = tuning_parser(__doc__)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--alphas", default="0,0.5,1.0,mean", help="comma-separated alphas to compare")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    predictor = Predictor(resolve_model_dir(args.model), second_read=False)  # the router's scale only
    alphas: list[float | str] = [a if a == "mean" else float(a) for a in args.alphas.split(",")]
    table = Table(title=f"Beam {args.beam} length penalty on the tuning split ({args.n} images per set)")
    for column in ("data", "decoding", "exact match", "edit similarity", "s / image"):
        table.add_column(column, justify="right")
    for name, samples in tuning_split(args.datasets, args.n).items():
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
