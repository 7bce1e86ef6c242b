"""How the model reads formulas in fonts it was trained on against fonts it never saw.

    python benchmarks/unseen_fonts.py [--model DIR] [--n 300] [--fonts bookman,euler,avant,helvet-upright] [--beam 1]
        [--no-second-read]

The cn_math tuning formulas (validation formulas from number 5,000 on, which no reported figure uses) are rendered
with TeX in each font at 200 dpi, as `texlens data build` renders cn_math validation in Euler, and read by the
model. Prints exact match, edit similarity, BLEU-4 and the share read at the handwriting scale (the router's
call, or a surer second read; ``--no-second-read``: the router's call alone) per font, and whether a training set
draws that font:
``bookman`` is one of train_fonts' faces, ``euler`` is held out for the reported cn_math figures, and
``texlens.data.render.UNSEEN_FONTS`` are held out from everything, to check that what a change does for Euler
carries to other shapes. ``--out DIR`` keeps the renderings (default: a temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.data.render import EXTRA_FONTS, MAIN_FONTS, MORE_FONTS, UNSEEN_FONTS, render_formulas
from texlens.evaluate import evaluate
from texlens.latex import to_latex
from texlens.predictor import Predictor

TRAINING_FONTS = (*MAIN_FONTS, *MORE_FONTS, *EXTRA_FONTS)


def main() -> None:
    """Render the tuning formulas in each font, read them, print the table."""
    parser = tuning_parser(__doc__)
    parser.add_argument("--fonts", default=",".join(("bookman", "euler", *UNSEEN_FONTS)))
    parser.add_argument("--beam", type=int, default=1, help="beam width; 1 = greedy")
    parser.add_argument("--out", default=None, help="keep the renderings here")
    parser.add_argument("--no-second-read", action="store_true", help="the router's scale only")
    args = parser.parse_args()

    formulas = [to_latex(s.latex) for s in tuning_split(args.datasets, args.n)["cn_math (euler)"]]
    predictor = Predictor(args.model, second_read=not args.no_second_read)
    table = Table(title=f"cn_math tuning formulas ({len(formulas)}) by font, beam {args.beam}")
    for column in (
        "font",
        "in training",
        "rendered",
        "exact match",
        "edit similarity",
        "BLEU-4",
        "read as handwriting",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for font in args.fonts.split(","):
            out = root / font
            report = render_formulas(formulas, out, fonts=[font], dpi=200, jobs=1, progress=False)
            if not report.rendered:
                sys.exit(f"{font}: nothing rendered ({report.summary()})")
            m = evaluate(predictor, out, beam=args.beam)
            table.add_row(
                font,
                "yes" if font in TRAINING_FONTS else "no",
                str(len(report.rendered)),
                f"{m['exact_match']:.1%}",
                f"{m['edit_similarity']:.3f}",
                f"{m['bleu4']:.3f}",
                "-" if m["called_handwritten"] is None else f"{m['called_handwritten']:.1%}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
