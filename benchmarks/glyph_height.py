"""Choose the glyph height that preprocessing scales images to, on a tuning split no reported figure uses.

    python benchmarks/glyph_height.py [--model DIR] [--n 300] [--heights 8,9.4,10,11,12,13] [--beam 1]

Same tuning images as `benchmarks/beam_alpha.py`: IM2LATEX held-back validation images from number 2,000 on and
cn_math validation images (Euler font) from number 5,000 on (the model card reports the first 1,000 and 2,000).
Greedy decoding unless ``--beam`` says otherwise (every height so far was chosen greedily); prints exact match,
edit similarity and BLEU-4 for each height, with second reads off (the router's scale only). A model reads at the height in its ``config.json``
(``"preprocess": {"target_glyph_height": H}``), else at ``PreprocessConfig``'s default.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.metrics import bleu4, exact_match, mean_edit_similarity
from texlens.predictor import Predictor, resolve_model_dir


def main() -> None:
    """Decode the tuning split at each glyph height; print the table."""
    parser = tuning_parser(__doc__)
    parser.add_argument("--heights", default="8,9.4,10,11,12,13", help="comma-separated glyph heights (px)")
    parser.add_argument("--beam", type=int, default=1, help="beam width; 1 = greedy")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    # The router's scale only: a second read at the handwriting scale would blur what the printed height does.
    predictor = Predictor(resolve_model_dir(args.model), second_read=False)
    model_height = predictor.preprocess_config.target_glyph_height
    heights = [float(h) for h in args.heights.split(",")]
    table = Table(
        title=f"Glyph height on the tuning split ({args.n} images per set; the model's: {model_height})"
    )
    for column in ("data", "glyph px", "exact match", "edit similarity", "BLEU-4", "s / image"):
        table.add_column(column, justify="right")
    for name, samples in tuning_split(args.datasets, args.n).items():
        refs = [s.latex.split() for s in samples]
        for height in heights:
            predictor.preprocess_config = dataclasses.replace(
                predictor.preprocess_config, target_glyph_height=height
            )
            start = time.perf_counter()
            with console.status(f"{name}: {height} px"):
                tokens = [
                    p.tokens for p in predictor.predict_paths([s.image for s in samples], beam=args.beam)
                ]
            seconds = (time.perf_counter() - start) / len(samples)
            row = (exact_match(tokens, refs), mean_edit_similarity(tokens, refs), bleu4(tokens, refs))
            table.add_row(
                name, f"{height:g}", f"{row[0]:.1%}", f"{row[1]:.3f}", f"{row[2]:.3f}", f"{seconds:.3f}"
            )
    console.print(table)


if __name__ == "__main__":
    main()
