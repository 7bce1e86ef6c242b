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
    assert files == ["config.json", "model.safetensors", "router.json", "router.safetensors", "vocab.json"]
    assert (BUNDLED / "model.safetensors").stat().st_size < 40_000_000
    assert (BUNDLED / "router.safetensors").stat().st_size < 2_000_000
    json.loads((BUNDLED / "config.json").read_text())
    json.loads((BUNDLED / "router.json").read_text())


def test_bundled_router_tells_the_handwritten_example_from_the_printed_ones() -> None:
    from texlens import Predictor

    predictions = Predictor().predict(EXAMPLES)
    calls = {Path(p.image).name: p.handwritten for p in predictions}
    assert calls == {p.name: p.name.startswith("handwritten") for p in EXAMPLES}


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


def _documented_readings() -> dict[str, str]:
    """File name -> formula, from the tables of ``examples/README.md``."""
    readings = {}
    for line in (PACKAGE / "examples" / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].endswith(".png"):
            readings[cells[0]] = cells[2]
    return readings


def test_bundled_model_reads_the_documented_examples() -> None:
    """The README promises correct LaTeX for the bundled examples. One may slip on another CPU's arithmetic
    (``euler.png``'s first token wins with p = 0.45), so three of four must be exact, canonically."""
    readings = _documented_readings()
    assert sorted(readings) == [p.name for p in EXAMPLES]
    result = CliRunner().invoke(app, ["predict", *map(str, EXAMPLES)])
    assert result.exit_code == 0, result.output
    read = dict(zip((p.name for p in EXAMPLES), result.stdout.strip().splitlines(), strict=True))
    wrong = {name: read[name] for name in readings if normalize(read[name]) != normalize(readings[name])}
    assert len(wrong) <= 1, f"misread: {wrong}"


def test_eval_reports_the_share_the_router_called_handwritten(tmp_path) -> None:
    from texlens.evaluate import evaluate

    readings = _documented_readings()
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\t{readings[p.name]}\n" for p in EXAMPLES), encoding="utf-8")
    metrics = evaluate(None, tmp_path, beam=1)
    handwritten = sum(p.name.startswith("handwritten") for p in EXAMPLES)
    assert metrics["called_handwritten"] == handwritten / len(EXAMPLES)
