"""Measure a model on a labelled dataset: ``texlens eval --model DIR --data DATASET``.

Predictions come from the same :class:`~texlens.predictor.Predictor` users run (same preprocessing, decoding and
backend), so the figures are what ``texlens predict`` delivers; throughput is end to end, from image file to LaTeX.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from texlens import DEFAULT_BEAM
from texlens.latex import LatexError, normalize_tokens, to_latex
from texlens.metrics import MetricSet, edit_similarity, image_matches

__all__ = ["canonical_tokens", "evaluate", "print_report"]


def canonical_tokens(tokens: list[str]) -> list[str]:
    """Predicted tokens in canonical form (the references are); broken predictions stay as they are."""
    try:
        return normalize_tokens(tokens)
    except LatexError:
        return list(tokens)


def evaluate(
    model: Any = None,
    dataset_path: str | Path = "",
    *,
    beam: int = DEFAULT_BEAM,
    limit: int | None = None,
    batch_size: int = 16,
    image_match: bool = False,
    errors_csv: str | Path | None = None,
    backend: str = "torch",
    num_threads: int | None = None,
    second_read: bool = True,
) -> dict[str, Any]:
    """All metrics of ``model`` (a model directory, bundled name, ``None`` = default, or a Predictor) on a dataset.

    Returns edit similarity, exact match, BLEU-4, ExpRate (<= 0, 1, 2 token errors), optionally image match
    (TeX renders of prediction and reference compared pixel by pixel), images per second, and counts.
    ``errors_csv`` receives every sample whose prediction differs from the reference, worst first.
    ``second_read=False`` reads each image once, at the router's scale (``Predictor``'s ``second_read``).
    """
    from texlens.data.formats import read_dataset
    from texlens.predictor import Predictor

    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = Predictor(model, backend=backend, num_threads=num_threads, second_read=second_read)
    samples, issues = read_dataset(dataset_path)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"{dataset_path}: no usable samples to evaluate")

    start = time.perf_counter()
    predictions = list(predictor.predict_paths([s.image for s in samples], beam=beam, batch_size=batch_size))
    seconds = time.perf_counter() - start

    metrics = MetricSet()
    preds = [canonical_tokens(p.tokens) if p.error is None else [] for p in predictions]
    refs = [s.latex.split() for s in samples]
    metrics.update(preds, refs)
    if image_match:
        # Render the LaTeX people get (to_latex), where text-mode tokens join up as TeX reads them.
        metrics.update_image_match(image_matches([to_latex(p) for p in preds], [to_latex(r) for r in refs]))
    result: dict[str, Any] = {
        "dataset": str(dataset_path),
        "model": str(getattr(predictor, "model_dir", model)),
        "backend": getattr(predictor, "backend", backend),
        "beam": beam,
        **metrics.compute(),
        "unreadable_images": sum(p.error is not None for p in predictions),
        "called_handwritten": _handwritten_share(predictions),
        "skipped_lines": len(issues),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(samples) / seconds, 2) if seconds > 0 else None,
    }
    result["count"] = len(samples)
    if errors_csv is not None:
        _write_errors(errors_csv, samples, predictions, preds, refs)
    return result


def _handwritten_share(predictions: list) -> float | None:
    """Share of the read images read at the handwriting scale: the router's call, or a surer second read (None: no
    router)."""
    calls = [p.handwritten for p in predictions if p.error is None and p.handwritten is not None]
    return sum(calls) / len(calls) if calls else None


def _write_errors(path: str | Path, samples: list, predictions: list, preds: list, refs: list) -> None:
    """Per-sample CSV of wrong predictions, lowest edit similarity first."""
    rows = []
    for sample, prediction, pred, ref in zip(samples, predictions, preds, refs, strict=True):
        if pred != ref:
            rows.append(
                (
                    edit_similarity(pred, ref),
                    str(sample.image),
                    " ".join(ref),
                    " ".join(pred),
                    prediction.error,
                )
            )
    rows.sort(key=lambda row: (row[0], row[1]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "reference", "prediction", "edit_similarity", "error"])
        for sim, image, ref, pred, error in rows:
            writer.writerow([image, ref, pred, f"{sim:.4f}", error or ""])


def print_report(metrics: dict[str, Any]) -> None:
    """Print the metrics as a table (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="texlens eval", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    names = {
        "model": "model",
        "dataset": "dataset",
        "count": "samples",
        "edit_similarity": "edit similarity",
        "exact_match": "exact match",
        "bleu4": "BLEU-4",
        "exprate": "ExpRate",
        "exprate_1": "ExpRate <= 1 error",
        "exprate_2": "ExpRate <= 2 errors",
        "image_match": "image match",
        "called_handwritten": "read at the handwriting scale",
        "images_per_second": "images / s",
        "seconds": "seconds",
        "unreadable_images": "unreadable images",
        "skipped_lines": "skipped dataset lines",
        "beam": "beam",
        "backend": "backend",
    }
    for key, label in names.items():
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            shown = (
                f"{value:.4f}"
                if isinstance(value, float) and key not in ("seconds", "images_per_second")
                else str(value)
            )
            table.add_row(label, shown)
    Console().print(table)
