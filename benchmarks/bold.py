"""Bold type: how far the stroke perturbation moves a printed formula's weight, and how often a model reads bold.

    python benchmarks/bold.py [--model DIR] [--n 300]   # both tables (default: the bundled model)
    python benchmarks/bold.py --no-model                # the perturbation's reach against bold's only

Bold Computer Modern carries about 45 % more ink than regular. The first table renders one formula in regular
and in bold at the training renders' resolutions and draws the stroke perturbation alone 200 times on each:
if the heaviest regular draw is heavier than bold, or the lightest bold draw lighter than regular, training
teaches the model that weight says nothing about bold. The second reads the tuning split's
formulas (the images ``benchmarks/glyph_height.py`` uses and no reported figure does): every one whose
reference has a bold command (``\\bf``, ``\\mathbf``, ``\\boldsymbol``) and the first ``--n`` without; greedy,
second reads as users get them. "Bold read" is the share of bold references whose reading has a bold command,
"bold invented" the share of the others whose reading has one.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.data.augment import HANDWRITING, AugmentConfig, build_augment
from texlens.data.render import render_many_pixels
from texlens.image import analyse_ink, glyph_height_from_stats

BOLD = frozenset({r"\bf", r"\mathbf", r"\boldsymbol", r"\bm", r"\pmb"})
REGULAR = r"E ( v ) = \frac { d } { d t } E ( q ) , \quad x _ { 2 } + 7 B"
BOLD_FORMULA = (
    r"\mathbf { E } ( \mathbf { v } ) = \frac { \mathbf { d } } { \mathbf { d } t } \mathbf { E } ( \mathbf { q } )"
    r" , \quad \mathbf { x } _ { \mathbf { 2 } } + \mathbf { 7 } \mathbf { B }"
)


def ink(image: np.ndarray) -> float:
    """Total darkness of a grey image (dark ink on white), in fully black pixels."""
    return float((255.0 - image.astype(np.float64)).sum() / 255.0)


def weight_table(draws: int = 200) -> Table:
    """Regular and bold ink at four resolutions, and the extremes of the stroke perturbation on each."""
    table = Table(title=f"Ink relative to regular type ({draws} draws of the stroke perturbation alone)")
    for column in (
        "dpi",
        "glyph px",
        "bold",
        "print: heaviest regular",
        "print: lightest bold",
        "handwriting: heaviest regular",
    ):
        table.add_column(column, justify="right")
    off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    for dpi in (110, 160, 200, 260):
        regular, bold = render_many_pixels([REGULAR, BOLD_FORMULA], dpi=dpi)
        if regular is None or bold is None:
            sys.exit("TeX could not render the test formulas; is TeX Live installed?")
        base = ink(regular)
        row = [
            f"{dpi}",
            f"{glyph_height_from_stats(analyse_ink(regular).stats):.1f}",
            f"{ink(bold) / base:.2f}",
        ]
        for config, image, pick in (
            (AugmentConfig(), regular, max),
            (AugmentConfig(), bold, min),
            (HANDWRITING, regular, max),
        ):
            augment = build_augment(
                1.0, seed=dpi, config=dataclasses.replace(config, **(off | {"stroke_p": 1.0}))
            )
            row.append(f"{pick(ink(augment(image)) for _ in range(draws)) / base:.2f}")
        table.add_row(*row)
    return table


def bold_table(model: str | None, datasets: str, n: int) -> Table:
    """Bold read and bold invented on the tuning split (greedy, second reads on)."""
    from texlens.predictor import Predictor, resolve_model_dir

    predictor = Predictor(resolve_model_dir(model))
    table = Table(title=f"Bold on the tuning split (model: {model or 'bundled'})")
    for column in ("data", "bold formulas", "bold read", "exact (bold)", "others", "bold invented"):
        table.add_column(column, justify="right")
    for name, samples in tuning_split(datasets, None).items():
        bold = [s for s in samples if BOLD & set(s.latex.split())]
        plain = [s for s in samples if not BOLD & set(s.latex.split())][:n]
        read = {}
        for group in (bold, plain):
            for s, p in zip(group, predictor.predict_paths([s.image for s in group], beam=1), strict=True):
                read[s.image] = p.tokens
        has_bold = [bool(BOLD & set(read[s.image])) for s in bold]
        exact = [read[s.image] == s.latex.split() for s in bold]
        invented = [bool(BOLD & set(read[s.image])) for s in plain]
        table.add_row(
            name,
            f"{len(bold)}",
            f"{np.mean(has_bold):.1%}",
            f"{np.mean(exact):.1%}",
            f"{len(plain)}",
            f"{np.mean(invented):.1%}",
        )
    return table


def main() -> None:
    parser = tuning_parser(__doc__)
    parser.add_argument("--no-model", action="store_true", help="the first table only")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(weight_table())
    if not args.no_model:
        console.print(bold_table(args.model, args.datasets, args.n))


if __name__ == "__main__":
    main()
