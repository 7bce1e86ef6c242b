"""The canonical form of a real formula renders to the same pixels as the original."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import normalize_pixels  # noqa: E402


def test_canonical_form_renders_identically(shared_data, tex_available) -> None:
    for name in ("cn_math", "im2latex"):
        result = normalize_pixels.compare(normalize_pixels.corpus(name, 150, shared_data))
        assert result["rendered"] >= 140, name
        assert result["rate"] >= 0.98, (name, result["different"][:5])
