"""Pieces the benchmark scripts share. Run a script as ``python benchmarks/NAME.py``: that puts this folder on
``sys.path``, so ``from _shared import ...`` finds this module."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import httpx
import numpy as np

from texlens.data.formats import read_dataset
from texlens.image import ImageError, preprocess

# Validation images that no reported figure uses, for choosing settings: the model card evaluates the first
# 1,000 IM2LATEX held-back and 2,000 cn_math images, the compile-rate benchmark the first 500 of IM2LATEX and
# CROHME 2014 test. Set name -> (folder written by `texlens data build`, first sample used).
TUNING = {
    "im2latex held back": ("val_im2latex", 2000),
    "cn_math (euler)": ("val_cn_math", 5000),
}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_readable(paths: Iterable[Path], n: int) -> list[Path]:
    """The first ``n`` of ``paths`` that texlens can read; the others are skipped with a message on stderr.

    IM2LATEX-100K's validation set holds a blank image (196.png), which a server rightly refuses with 422 and a
    user would not time.
    """
    readable: list[Path] = []
    for path in paths:
        if len(readable) == n:
            break
        try:
            preprocess(path)
        except ImageError as exc:
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
            continue
        readable.append(path)
    return readable


def read_in_turn(
    ok: Mapping[Hashable, np.ndarray],
    conf: Mapping[Hashable, np.ndarray],
    order: Sequence[Hashable],
    below: float,
    cost: Mapping[Hashable, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What the Predictor's second reads give, scored from reads already made: per image, whether the kept read is
    right when the reads of ``order`` are made in turn while the surest so far is less sure than ``below`` (the
    surest kept), and the decodings that took (``cost`` per read, default 1; an ensemble of two views costs 2)."""
    cost = cost or {}
    best, right = conf[order[0]].copy(), ok[order[0]].copy()
    decodings = np.full(len(best), float(cost.get(order[0], 1)))
    for key in order[1:]:
        again = best < below
        decodings += again * cost.get(key, 1)
        better = again & (conf[key] > best)
        best[better], right[better] = conf[key][better], ok[key][better]
    return right, decodings


def tuning_parser(doc: str | None) -> argparse.ArgumentParser:
    """Arguments every tuning benchmark takes: ``--model``, ``--n`` (images per set), ``--datasets``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory or bundled name (default: bundled)")
    parser.add_argument("--n", type=int, default=300, help="images per tuning set")
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--datasets", default=str(repo / "datasets"), help="where `texlens data build` wrote")
    return parser


def tuning_split(datasets: str | Path, n: int | None) -> dict[str, list]:
    """Set name -> ``n`` samples of the tuning split (see ``TUNING``; None: all of it); SystemExit if a set is
    missing or short."""
    split = {}
    for name, (folder, skip) in TUNING.items():
        path = Path(datasets) / folder
        if not path.is_dir():
            sys.exit(
                f"{path}: not found; run `texlens data build --shared ../shared/data --out datasets` first"
            )
        samples = read_dataset(path)[0][skip : None if n is None else skip + n]
        if not samples:
            sys.exit(f"{path}: no samples from number {skip} on; run `texlens data build` first")
        split[name] = samples
    return split


def wait_healthy(
    process: subprocess.Popen, health_url: str, name: str, timeout: float = 120.0, poll: float = 0.25
) -> None:
    """Return once ``health_url`` answers 200; SystemExit if ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}; run it by hand to see why")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    process.kill()
    raise SystemExit(f"{name} did not answer {health_url} within {timeout:.0f} s")
