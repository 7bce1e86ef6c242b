"""Inference speed of the Predictor on real IM2LATEX-100K validation images, per backend and thread count.

    python benchmarks/speed.py [--model DIR] [--n 200] [--threads 1,2] [--batch 16] [--beam 3]

For torch, onnx and onnx-int8 with 1 and 2 threads it prints the median and p90 latency of one image at a
time (load + preprocess + decode, as `texlens predict` does it), the throughput in batches of 16, the mean
number of output tokens, and how often the tokens equal those of the torch backend; then which backend wins.
``--beam`` is the beam width (default: texlens's default decoding, ``texlens.DEFAULT_BEAM``; 1 = greedy);
``--no-second-read`` reads each image at its router's scale only (by default an unsure read is read again at the
other scale, as ``texlens predict`` does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import first_readable
from rich.console import Console
from rich.table import Table

from texlens import DEFAULT_BEAM
from texlens.export import export_onnx
from texlens.predictor import Predictor, resolve_model_dir

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnx", "onnx-int8")


def shared_data() -> Path:
    """The shared data folder beside the repository (or $TEXLENS_SHARED_DATA)."""
    return Path(os.environ.get("TEXLENS_SHARED_DATA", REPO.parent / "shared" / "data"))


def val_images(n: int) -> list[Path]:
    """The first ``n`` readable IM2LATEX-100K validation images, in the order of val.matching.txt."""
    root = shared_data() / "im2latex100k"
    lines = (root / "val.matching.txt").read_text().split("\n")
    return first_readable((root / "images_val" / line.split()[0] for line in lines if line.strip()), n)


def measure(predictor: Predictor, images: list[Path], batch: int, beam: int) -> dict:
    """Latency of single images, throughput of batches, tokens per image."""
    predictor.predict(images[0], beam=beam)  # warm-up: first calls allocate and pick kernels
    latencies = []
    for path in images:
        start = time.perf_counter()
        predictor.predict(path, beam=beam)
        latencies.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    results = list(predictor.predict_paths(images, beam=beam, batch_size=batch))
    elapsed = time.perf_counter() - start
    return {
        "median": statistics.median(latencies),
        "p90": float(np.percentile(latencies, 90)),
        "throughput": len(images) / elapsed,
        "tokens": statistics.mean(len(r.tokens) for r in results),
        "results": [r.tokens for r in results],
    }


def main() -> None:
    """Run every backend x thread count and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model directory or bundled name (default: bundled)")
    parser.add_argument("--n", type=int, default=200, help="number of validation images")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma list; the first is the reference for 'same tokens'",
    )
    parser.add_argument("--batch", type=int, default=16, help="batch size for the throughput column")
    parser.add_argument("--max-len", type=int, default=256, help="longest output, in tokens")
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, help="beam width; 1 = greedy")
    parser.add_argument(
        "--no-second-read",
        action="store_true",
        help="the router's scale only (texlens predict --no-second-read)",
    )
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)  # no wrapped columns in logs

    model_dir = resolve_model_dir(args.model)
    images = val_images(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp)
        with console.status("exporting to ONNX (float and int8)"):
            export_onnx(model_dir, onnx_dir, int8=True)
        decoding = "greedy" if args.beam == 1 else f"beam {args.beam}"
        decoding += ", no second reads" if args.no_second_read else ""
        table = Table(
            title=f"texlens inference speed: {len(images)} IM2LATEX-100K val images, {decoding}, {model_dir}"
        )
        for column in ("backend", "threads", "median ms", "p90 ms", f"images/s (batch {args.batch})"):
            table.add_column(column, justify="right")
        table.add_column("mean tokens", justify="right")
        table.add_column(f"same tokens as {args.backends.split(',')[0]}", justify="right")
        rows = []
        reference = None
        for backend in args.backends.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                source = model_dir if backend == "torch" else onnx_dir
                predictor = Predictor(
                    source,
                    backend=backend,
                    num_threads=threads,
                    max_len=args.max_len,
                    second_read=not args.no_second_read,
                )
                with console.status(f"{backend}, {threads} thread(s)"):
                    row = measure(predictor, images, args.batch, args.beam)
                if reference is None:
                    reference = row["results"]
                same = np.mean([a == b for a, b in zip(row["results"], reference, strict=True)])
                rows.append((backend, threads, row))
                table.add_row(
                    backend,
                    str(threads),
                    f"{row['median']:.1f}",
                    f"{row['p90']:.1f}",
                    f"{row['throughput']:.1f}",
                    f"{row['tokens']:.1f}",
                    f"{same:.1%}",
                )
    console.print(table)
    fastest = min(rows, key=lambda r: r[2]["median"])
    busiest = max(rows, key=lambda r: r[2]["throughput"])
    console.print(
        f"lowest single-image latency: [bold]{fastest[0]}[/] with {fastest[1]} thread(s), "
        f"median {fastest[2]['median']:.1f} ms; highest throughput: [bold]{busiest[0]}[/] with {busiest[1]} "
        f"thread(s), {busiest[2]['throughput']:.1f} images/s"
    )


if __name__ == "__main__":
    main()
