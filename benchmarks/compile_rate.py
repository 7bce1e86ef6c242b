"""How often the Predictor's LaTeX compiles with TeX, and how close it is to the reference, greedy vs beam.

    python benchmarks/compile_rate.py [--model DIR] [--n 1000] [--beam 3] [--failures FAILED.tsv]

Half of the images come from IM2LATEX-100K validation (printed; the part the dataset builder holds back from
training, ``texlens.data.build.split_im2latex``), half from CROHME 2014 test (handwritten).
Each prediction is rendered with TeX Live (``texlens.data.render.render_many_pixels``); a prediction that TeX
rejects (or an image the Predictor could not read) does not compile. The references are rendered too, as the
ceiling: a few of them use macros the renderer's preamble lacks.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from texlens.data.build import split_im2latex
from texlens.data.formats import Sample, read_dataset
from texlens.data.render import render_many_pixels
from texlens.latex import to_latex
from texlens.metrics import exact_match, mean_edit_similarity
from texlens.predictor import Predictor, resolve_model_dir

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared data folder beside the repository (or $TEXLENS_SHARED_DATA)."""
    return Path(os.environ.get("TEXLENS_SHARED_DATA", REPO.parent / "shared" / "data"))


def datasets(n: int) -> dict[str, list[Sample]]:
    """About ``n`` samples: the first n/2 of IM2LATEX-100K val (held-back part) and of CROHME 2014 test."""
    data = shared_data()
    printed = split_im2latex(read_dataset(data / "im2latex100k")[0])[1]
    handwritten = read_dataset(data / "crohme" / "test_2014_caption.txt")[0]
    return {"im2latex val": printed[: n - n // 2], "crohme test": handwritten[: n // 2]}


def compiles(formulas: list[str]) -> list[bool]:
    """Whether TeX renders each formula (an empty one does not)."""
    kept = [i for i, f in enumerate(formulas) if f.strip()]
    rendered = render_many_pixels([formulas[i] for i in kept])
    ok = [False] * len(formulas)
    for i, r in zip(kept, rendered, strict=True):
        ok[i] = r is not None
    return ok


def compile_rate(formulas: list[str]) -> float:
    """Fraction of formulas that TeX renders (empty ones count as failures)."""
    return sum(compiles(formulas)) / len(formulas) if formulas else 0.0


def main() -> None:
    """Predict, render and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model directory or bundled name (default: bundled)")
    parser.add_argument(
        "--n", type=int, default=1000, help="number of images, half printed, half handwritten"
    )
    parser.add_argument("--beam", type=int, default=3, help="beam width compared with greedy")
    parser.add_argument("--max-len", type=int, default=256, help="longest output, in tokens")
    parser.add_argument("--backend", default="torch", help="torch, onnx or onnx-int8")
    parser.add_argument("--failures", default=None, help="write the predictions TeX rejects to this TSV file")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)  # no wrapped columns in logs

    model_dir = resolve_model_dir(args.model)
    predictor = Predictor(model_dir, backend=args.backend, max_len=args.max_len)
    table = Table(title=f"Compile rate and accuracy of {model_dir} ({args.backend})")
    for column in ("data", "decoding", "images", "compiles", "edit similarity", "exact match", "s / image"):
        table.add_column(column, justify="right")
    totals: dict[str, list] = {}  # decoding -> [compiled, images, edit similarity sum, exact sum]
    failed: list[tuple[str, str, str, str]] = []
    for name, samples in datasets(args.n).items():
        refs = [s.latex.split() for s in samples]
        with console.status(f"{name}: rendering the references"):
            table.add_row(
                name, "reference", str(len(samples)), f"{compile_rate([to_latex(r) for r in refs]):.1%}"
            )
        for beam in (1, args.beam):
            label = "greedy" if beam == 1 else f"beam {beam}"
            with console.status(f"{name}: {label}"):
                start = time.perf_counter()
                preds = list(predictor.predict_paths([s.image for s in samples], beam=beam))
                seconds = (time.perf_counter() - start) / max(len(samples), 1)
                ok = compiles([p.latex if p.error is None else "" for p in preds])
            tokens = [p.tokens for p in preds]
            edit, exact = mean_edit_similarity(tokens, refs), exact_match(tokens, refs)
            n = len(samples)
            total = totals.setdefault(label, [0, 0, 0.0, 0.0])
            for k, value in enumerate((sum(ok), n, edit * n, exact * n)):
                total[k] += value
            failed += [
                (name, label, str(s.image), p.error or p.latex)
                for s, p, c in zip(samples, preds, ok, strict=True)
                if not c
            ]
            table.add_row(
                name, label, str(n), f"{sum(ok) / n:.1%}", f"{edit:.3f}", f"{exact:.1%}", f"{seconds:.3f}"
            )
    for label, (compiled, n, edit_sum, exact_sum) in totals.items():
        table.add_row(
            "all", label, str(n), f"{compiled / n:.1%}", f"{edit_sum / n:.3f}", f"{exact_sum / n:.1%}", ""
        )
    console.print(table)
    if args.failures:
        with open(args.failures, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(("data", "decoding", "image", "prediction or error"))
            writer.writerows(failed)
        console.print(f"{len(failed)} predictions TeX rejects written to {args.failures}")


if __name__ == "__main__":
    main()
