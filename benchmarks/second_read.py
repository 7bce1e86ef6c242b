"""When to read an image again, and at what: ``texlens.predictor.SECOND_READ_BELOW`` and ``SECOND_READ_ZOOM``.

    python benchmarks/second_read.py [--model DIR] [--n 300] [--beam 3] [--zoom 1.12] [--thresholds 0.85,0.88,0.92]

A model with a router reads an image at the printed or the handwriting glyph height, as the router calls it. Faces
the router never saw are often called handwritten (docs/RESULTS.md, "Stage 18"), and a handwriting-scale read of
print loses a few points; and a read at a slightly larger scale is sometimes right where the first was wrong. This
reads every image once in each of the Predictor's views (the router's scale, the other scale, the router's scale
zoomed by ``--zoom``), then scores each policy from those reads: one view alone, both scales always (the surer
kept: the policy before zooming), every view always (the surest kept), and what the Predictor does: the next view
read while the surest read so far is less sure than a threshold. Sets: the tuning split (cn_math in Euler from
number 5,000, IM2LATEX held back from number 2,000), the same cn_math formulas rendered in the faces no training
set draws (``texlens.data.render.UNSEEN_FONTS``), and handwriting. No handwritten set is both unseen in training
and unreported (CROHME 2014 test is the reported one), so the first ``--n`` of CROHME 2014 *train* stand in: the
model is surer of them than of new handwriting, so read their row as an upper bound.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from _shared import read_in_turn, tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.data.formats import read_dataset
from texlens.data.render import UNSEEN_FONTS, render_formulas
from texlens.evaluate import canonical_tokens
from texlens.image import ImageError
from texlens.latex import to_latex
from texlens.predictor import SECOND_READ_ZOOM, Predictor


def read_views(predictor: Predictor, samples: list, beam: int) -> dict[str, np.ndarray]:
    """Per readable sample: the router's call, and each view's confidence and exactness (views in the Predictor's
    order: the router's scale, the other scale, the router's scale zoomed)."""
    views, calls, refs = [], [], []
    for sample in samples:
        try:
            every = predictor.views(sample.image)
        except ImageError as exc:
            print(f"skipped {sample.image}: {exc}", file=sys.stderr)
            continue
        if len(every) != 3:
            sys.exit(
                f"{predictor.model_dir}: the model reads one scale only (no router or no handwriting height)"
            )
        views.append([view.pixels for view in every])
        calls.append(bool(every[0].handwritten))
        refs.append(sample.latex.split())
    out: dict[str, np.ndarray] = {"called": np.array(calls)}
    for k in range(3):
        reads = predictor.decode([v[k] for v in views], beam=beam)
        out[f"conf{k}"] = np.array([r.confidence for r in reads])
        out[f"ok{k}"] = np.array(
            [canonical_tokens(r.tokens) == ref for r, ref in zip(reads, refs, strict=True)]
        )
    return out


def reread(reads: dict[str, np.ndarray], order: list[int], below: float) -> tuple[float, float]:
    """(exact match, mean reads per image) when the views of ``order`` are read in turn while the surest read so
    far is less sure than ``below``, and the surest is kept (what the Predictor does)."""
    ok = {k: reads[f"ok{k}"] for k in order}
    conf = {k: reads[f"conf{k}"] for k in order}
    right, count = read_in_turn(ok, conf, order, below)
    return float(right.mean()), float(count.mean())


def policies(reads: dict[str, np.ndarray], thresholds: list[float]) -> list[tuple[float, float]]:
    """(exact match, reads per image) of: the router's scale, printed, handwriting, zoomed, both scales always
    (the surer kept), both scales when the first read is below 0.88 (texlens before the zoomed view), every view
    always, then the Predictor's policy at each threshold."""
    called = reads["called"]
    printed_ok = np.where(called, reads["ok1"], reads["ok0"])
    handwriting_ok = np.where(called, reads["ok0"], reads["ok1"])
    rows = [
        (reads["ok0"].mean(), 1.0),
        (printed_ok.mean(), 1.0),
        (handwriting_ok.mean(), 1.0),
        (reads["ok2"].mean(), 1.0),
        reread(reads, [0, 1], 2.0),
        reread(reads, [0, 1], 0.88),
        reread(reads, [0, 1, 2], 2.0),
    ]
    rows += [reread(reads, [0, 1, 2], t) for t in thresholds]
    return rows


def main() -> None:
    """Read the sets at both scales, print exact match and second-read share per policy."""
    parser = tuning_parser(__doc__)
    parser.add_argument("--beam", type=int, default=3, help="beam width (3 = texlens's default; 1 = greedy)")
    parser.add_argument("--thresholds", default="0.85,0.88,0.92,0.95")
    parser.add_argument("--zoom", type=float, default=SECOND_READ_ZOOM, help="the zoomed view's factor")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]

    predictor = Predictor(args.model, second_read_zoom=args.zoom)
    split = tuning_split(args.datasets, args.n)
    crohme = Path(args.datasets) / "train_crohme"
    if not crohme.is_dir():
        sys.exit(
            f"{crohme}: not found; run `texlens data build --shared ../shared/data --out datasets` first"
        )
    table = Table(
        title=f"exact match (reads per image), beam {args.beam}, zoom {args.zoom:g}, {args.n} per set"
    )
    table.add_column("set", no_wrap=True)
    for column in (
        "router's scale",
        "printed",
        "handwriting",
        "zoomed",
        "both scales",
        "both scales, again < 0.88",
        "every view",
    ):
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
            rows = policies(read_views(predictor, samples, args.beam), thresholds)
            every.append(rows)
            table.add_row(name, *cells(rows))
            print(name, "done", file=sys.stderr)
    table.add_row("mean of the sets", *cells(np.mean(np.array(every), axis=0)), style="bold")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def cells(rows) -> list[str]:
    """Table cells: exact match, and for the policies that read again, reads per image."""
    return [f"{ok:.1%}" + (f" ({reads:.2f})" if k >= 4 else "") for k, (ok, reads) in enumerate(rows)]


if __name__ == "__main__":
    main()
