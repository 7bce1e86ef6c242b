"""When to read an image a second time at the other scale: the choice of ``texlens.predictor.SECOND_READ_BELOW``.

    python benchmarks/second_read.py [--model DIR] [--n 300] [--beam 3] [--thresholds 0.8,0.85,0.9,0.95]

A model with a router reads an image at the printed or the handwriting glyph height, as the router calls it. Faces
the router never saw are often called handwritten (docs/RESULTS.md, "Stage 18"), and a handwriting-scale read of
print loses a few points. This reads every image at both scales once, then scores each policy from those reads:
the router's scale alone, one scale for all, both always (the more confident read kept), and a second read only
when the first one's confidence is below a threshold. Sets: the tuning split (cn_math in Euler from number 5,000,
IM2LATEX held back from number 2,000), the same cn_math formulas rendered in the faces no training set draws
(``texlens.data.render.UNSEEN_FONTS``), and handwriting. No handwritten set is both unseen in training and
unreported (CROHME 2014 test is the reported one), so the first ``--n`` of CROHME 2014 *train* stand in: the
model is surer of them than of new handwriting, so read their row as an upper bound.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.data.formats import read_dataset
from texlens.data.render import UNSEEN_FONTS, render_formulas
from texlens.evaluate import canonical_tokens
from texlens.image import ImageError
from texlens.latex import to_latex
from texlens.predictor import Predictor


def read_both(predictor: Predictor, samples: list, beam: int) -> dict[str, np.ndarray]:
    """Per readable sample: the router's call, and each scale's confidence and exactness."""
    views, calls, refs = [], [], []
    for sample in samples:
        try:
            both, handwritten = predictor.views(sample.image)
        except ImageError as exc:
            print(f"skipped {sample.image}: {exc}", file=sys.stderr)
            continue
        if len(both) != 2:
            sys.exit(
                f"{predictor.model_dir}: the model reads one scale only (no router or no handwriting height)"
            )
        # views() puts the router's scale first; store them as (printed, handwriting).
        views.append(both[::-1] if handwritten else both)
        calls.append(bool(handwritten))
        refs.append(sample.latex.split())
    out: dict[str, np.ndarray] = {"called": np.array(calls)}
    for k, scale in enumerate(("printed", "handwriting")):
        reads = predictor.decode([v[k] for v in views], beam=beam)
        out[f"{scale}_conf"] = np.array([r.confidence for r in reads])
        out[f"{scale}_ok"] = np.array(
            [canonical_tokens(r.tokens) == ref for r, ref in zip(reads, refs, strict=True)]
        )
    return out


def policies(reads: dict[str, np.ndarray], thresholds: list[float]) -> list[tuple[float, float]]:
    """(exact match, share read twice) of: router, printed, handwriting, both always, then each threshold."""
    called = reads["called"]
    first_ok = np.where(called, reads["handwriting_ok"], reads["printed_ok"])
    first_conf = np.where(called, reads["handwriting_conf"], reads["printed_conf"])
    other_ok = np.where(called, reads["printed_ok"], reads["handwriting_ok"])
    other_conf = np.where(called, reads["printed_conf"], reads["handwriting_conf"])
    surer_ok = np.where(other_conf > first_conf, other_ok, first_ok)
    rows = [
        (first_ok.mean(), 0.0),
        (reads["printed_ok"].mean(), 0.0),
        (reads["handwriting_ok"].mean(), 0.0),
        (surer_ok.mean(), 1.0),
    ]
    for t in thresholds:
        again = first_conf < t
        rows.append((np.where(again, surer_ok, first_ok).mean(), again.mean()))
    return rows


def main() -> None:
    """Read the sets at both scales, print exact match and second-read share per policy."""
    parser = tuning_parser(__doc__)
    parser.add_argument("--beam", type=int, default=3, help="beam width (3 = texlens's default; 1 = greedy)")
    parser.add_argument("--thresholds", default="0.8,0.85,0.88,0.9,0.95")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]

    predictor = Predictor(args.model)
    split = tuning_split(args.datasets, args.n)
    crohme = Path(args.datasets) / "train_crohme"
    if not crohme.is_dir():
        sys.exit(
            f"{crohme}: not found; run `texlens data build --shared ../shared/data --out datasets` first"
        )
    table = Table(title=f"exact match (share read twice), beam {args.beam}, {args.n} per set")
    table.add_column("set", no_wrap=True)
    for column in ("router's scale", "printed", "handwriting", "both, surer kept"):
        table.add_column(column, justify="right")
    for t in thresholds:
        table.add_column(f"again < {t:g}", justify="right", no_wrap=True)
    with tempfile.TemporaryDirectory() as tmp:
        sets = dict(split)
        formulas = [to_latex(s.latex) for s in split["cn_math (euler)"]]
        for font in UNSEEN_FONTS:
            report = render_formulas(
                formulas, Path(tmp) / font, fonts=[font], dpi=200, jobs=1, progress=False
            )
            sets[f"cn_math ({font})"] = read_dataset(Path(tmp) / font)[0]
            if not report.rendered:
                sys.exit(f"{font}: nothing rendered ({report.summary()})")
        sets["CROHME 2014 train (seen)"] = read_dataset(crohme)[0][: args.n]
        every = []
        for name, samples in sets.items():
            rows = policies(read_both(predictor, samples, args.beam), thresholds)
            every.append(rows)
            table.add_row(name, *cells(rows))
            print(name, "done", file=sys.stderr)
    table.add_row("mean of the sets", *cells(np.mean(np.array(every), axis=0)), style="bold")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def cells(rows) -> list[str]:
    """Table cells: exact match, and for the policies that read twice, how often."""
    return [f"{ok:.1%}" + (f" ({twice:.0%})" if k >= 3 else "") for k, (ok, twice) in enumerate(rows)]


if __name__ == "__main__":
    main()
