"""Second reads: an image the bundled model reads unsurely at the router's scale is read again at the other scale,
and the surer read is what the user gets (texlens.predictor.SECOND_READ_BELOW, benchmarks/second_read.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from texlens.cli import app
from texlens.predictor import SECOND_READ_BELOW, Predictor, resolve_model_dir

EXAMPLES = sorted((Path(__file__).parents[1] / "src" / "texlens" / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def predictor() -> Iterator[Predictor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Predictor()
    torch.set_num_threads(threads)


def alone(predictor: Predictor, image: Path) -> tuple[list, bool]:
    """Each scale's read of ``image`` decoded on its own (a batch of one, as predict() decodes a single image)."""
    views, called = predictor.views(image)
    return [predictor.decode([view], beam=1)[0] for view in views], called


def test_bundled_model_has_both_scales_and_the_default_threshold(predictor: Predictor) -> None:
    assert predictor.second_read_below == SECOND_READ_BELOW > 0
    for image in EXAMPLES:
        views, called = predictor.views(image)
        assert len(views) == 2 and isinstance(called, bool)
        # The router's scale comes first: handwriting is read bigger.
        first, other = (view.shape[1] for view in views)
        assert (first > other) == called, image.name


@pytest.mark.parametrize("image", EXAMPLES, ids=lambda p: p.name)
def test_the_surer_of_both_reads_is_kept_and_a_sure_read_is_not_repeated(
    predictor: Predictor, image: Path
) -> None:
    (first, other), called = alone(predictor, image)
    surer, surer_call = (other, not called) if other.confidence > first.confidence else (first, called)
    try:
        predictor.second_read_below = 1.01  # every read is unsure: both scales, the surer kept
        both = predictor.predict(image, beam=1)
        assert (both.latex, both.handwritten, both.image_size) == (surer.latex, surer_call, surer.image_size)
        assert both.confidence == pytest.approx(surer.confidence)
        for below in (None, first.confidence):  # off, or the first read exactly at the threshold: one read
            predictor.second_read_below = below or 0.0
            once = predictor.predict(image, beam=1)
            assert (once.latex, once.handwritten, once.image_size) == (first.latex, called, first.image_size)
            assert once.confidence == pytest.approx(first.confidence)
        predictor.second_read_below = first.confidence + 1e-6  # just unsure: read again
        assert predictor.predict(image, beam=1).latex == surer.latex
    finally:
        predictor.second_read_below = SECOND_READ_BELOW


def test_a_batch_keeps_its_order_and_each_image_its_surer_read(predictor: Predictor, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    sources = [EXAMPLES[0], broken, *EXAMPLES[1:], EXAMPLES[0]]
    try:
        predictor.second_read_below = 1.01
        results = predictor.predict(sources, beam=1)
    finally:
        predictor.second_read_below = SECOND_READ_BELOW
    assert [r.image for r in results] == [str(s) for s in sources]
    assert results[1].error and not results[1].latex
    assert results[0].to_json() | {"ms": 0} == results[-1].to_json() | {"ms": 0}
    for result in (results[0], *results[2:]):
        assert result.error is None and result.latex and 0 < result.confidence <= 1
        views, called = predictor.views(result.image)
        # The image size says which scale the kept read came from, and "handwritten" agrees with it.
        scale = [v.shape for v in views].index(result.image_size)
        assert result.handwritten == (called if scale == 0 else not called)


def test_a_model_without_a_router_reads_one_scale(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(resolve_model_dir(None), plain, ignore=shutil.ignore_patterns("router.*"))
    with pytest.warns(UserWarning, match="no router"):
        predictor = Predictor(plain, second_read_below=1.01)
    views, called = predictor.views(EXAMPLES[0])
    assert len(views) == 1 and called is None
    assert predictor.predict(EXAMPLES[0], beam=1).handwritten is None


def test_cli_turns_second_reads_off(tmp_path: Path) -> None:
    runner = CliRunner()
    on = runner.invoke(app, ["predict", *map(str, EXAMPLES), "--beam", "1", "--json"])
    off = runner.invoke(app, ["predict", *map(str, EXAMPLES), "--beam", "1", "--json", "--no-second-read"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    on_rows = [json.loads(line) for line in on.stdout.splitlines()]
    off_rows = [json.loads(line) for line in off.stdout.splitlines()]
    assert len(on_rows) == len(off_rows) == len(EXAMPLES)
    predictor = Predictor(second_read_below=None)
    for row, image in zip(off_rows, EXAMPLES, strict=True):
        assert row["latex"] == predictor.predict(image, beam=1).latex
    # A second read only ever replaces a read with a surer one.
    for a, b in zip(on_rows, off_rows, strict=True):
        assert a["confidence"] >= b["confidence"] - 1e-6
