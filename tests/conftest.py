"""Shared fixtures: where the real data lives."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The ../shared/data folder beside the repository (or $TEXLENS_SHARED_DATA)."""
    env = os.environ.get("TEXLENS_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set TEXLENS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tex_available() -> bool:
    if shutil.which("latex") is None or shutil.which("dvipng") is None:
        pytest.skip("TeX Live (latex, dvipng) is not installed")
    return True
