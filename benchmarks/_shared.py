"""Pieces the benchmark scripts share. Run a script as ``python benchmarks/NAME.py``: that puts this folder on
``sys.path``, so ``from _shared import ...`` finds this module."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from texlens.image import ImageError, preprocess


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
