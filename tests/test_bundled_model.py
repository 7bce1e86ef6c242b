"""The model that ships in the package reads the bundled examples out of the box (the README's first command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from texlens.cli import app
from texlens.latex import normalize

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "texlens"
BUNDLED = PACKAGE / "weights" / "default"
EXAMPLES = sorted((PACKAGE / "examples").glob("*.png"))


def test_bundled_model_is_small_and_pickle_free() -> None:
    files = sorted(p.name for p in BUNDLED.iterdir())
    assert files == ["config.json", "model.safetensors", "vocab.json"]
    assert (BUNDLED / "model.safetensors").stat().st_size < 40_000_000
    json.loads((BUNDLED / "config.json").read_text())


@pytest.mark.parametrize("as_json", [False, True])
def test_predict_bundled_examples(as_json: bool) -> None:
    assert len(EXAMPLES) >= 3
    args = ["predict", *map(str, EXAMPLES)] + (["--json"] if as_json else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(EXAMPLES)
    for line in lines:
        latex = json.loads(line)["latex"] if as_json else line
        assert latex
        # What we print is well-formed LaTeX: balanced, every command with its arguments.
        assert normalize(latex)
