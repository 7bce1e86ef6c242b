"""Should beam search run only where greedy decoding is unsure? Measured on the tuning split.

    python benchmarks/beam_on_doubt.py [--model DIR] [--n 300] [--beam 3] [--thresholds 0.3,0.5,0.7,0.9]

Every tuning image (see ``benchmarks/beam_alpha.py`` for which) is read greedily and with a ``--beam``-wide beam,
each image alone so that its time is its own. A reading is *unsure* when its least sure token has probability
below the threshold; the table shows, per threshold, what re-reading only the unsure images with the beam would
score and cost: the share re-read, exact match, edit similarity and seconds per image on one thread (greedy
time for every image plus beam time for the re-read ones). Threshold 0 is greedy alone.
"""

from __future__ import annotations

import sys
import time

from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.metrics import exact_match, mean_edit_similarity
from texlens.predictor import Predictor, resolve_model_dir


def read_alone(predictor: Predictor, images: list, beam: int) -> tuple[list, list[float]]:
    """Each image read on its own: (predictions, seconds per image)."""
    predictions, seconds = [], []
    for image in images:
        start = time.perf_counter()
        predictions.append(predictor.predict(image, beam=beam))
        seconds.append(time.perf_counter() - start)
    return predictions, seconds


def main() -> None:
    """Read the tuning split greedily and with the beam; print what each threshold would give."""
    parser = tuning_parser(__doc__)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--thresholds", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    predictor = Predictor(resolve_model_dir(args.model), num_threads=1)
    thresholds = [0.0, *(float(t) for t in args.thresholds.split(",")), 2.0]
    table = Table(title=f"Beam {args.beam} where greedy is unsure ({args.n} tuning images per set)")
    for column in ("data", "least token p <", "re-read", "exact match", "edit similarity", "s / image"):
        table.add_column(column, justify="right")
    for name, samples in tuning_split(args.datasets, args.n).items():
        refs = [s.latex.split() for s in samples]
        images = [s.image for s in samples]
        with console.status(f"{name}: greedy"):
            greedy, greedy_s = read_alone(predictor, images, 1)
        with console.status(f"{name}: beam {args.beam}"):
            beamed, beam_s = read_alone(predictor, images, args.beam)
        least = [min(p.token_confidences, default=0.0) for p in greedy]
        for threshold in thresholds:
            unsure = [p < threshold for p in least]
            tokens = [b.tokens if u else g.tokens for g, b, u in zip(greedy, beamed, unsure, strict=True)]
            seconds = sum(greedy_s) + sum(s for s, u in zip(beam_s, unsure, strict=True) if u)
            label = "0 (greedy)" if threshold == 0 else "every image" if threshold > 1 else f"{threshold:g}"
            table.add_row(
                name,
                label,
                f"{sum(unsure) / len(unsure):.0%}",
                f"{exact_match(tokens, refs):.1%}",
                f"{mean_edit_similarity(tokens, refs):.3f}",
                f"{seconds / len(samples):.3f}",
            )
        table.add_row(
            name, "beam alone", "100%", "", "", f"{sum(beam_s) / len(samples):.3f}", end_section=True
        )
    console.print(table)


if __name__ == "__main__":
    main()
