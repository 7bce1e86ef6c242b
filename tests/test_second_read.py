"""Second reads: an image the bundled model reads unsurely at the router's scale is read again at the other scale
and zoomed, and the surest read is what the user gets; print is read first as an ensemble of its scale and the zoomed
one (texlens.predictor.SECOND_READ_BELOW, SECOND_READ_ZOOM, benchmarks/second_read.py, benchmarks/scale_views.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from texlens.cli import app
from texlens.predictor import (
    SECOND_READ_BELOW,
    SECOND_READ_ZOOM,
    Prediction,
    Predictor,
    View,
    resolve_model_dir,
)

EXAMPLES = sorted((Path(__file__).parents[1] / "src" / "texlens" / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def predictor() -> Iterator[Predictor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Predictor()
    torch.set_num_threads(threads)


def alone(predictor: Predictor, image: Path) -> list[tuple[Prediction, View]]:
    """Each read of ``image`` decoded on its own (a batch of one, as predict() decodes a single image), with the
    view it names (an ensemble read names its first view)."""
    return [
        (predictor.decode([[v.pixels for v in read]], beam=1)[0], read[0]) for read in predictor.reads(image)
    ]


def kept(reads: list[tuple[Prediction, View]], below: float) -> tuple[Prediction, View]:
    """What predict() should return: the next view is read while the surest read so far is below ``below``."""
    best = reads[0]
    for read in reads[1:]:
        if best[0].confidence >= below:
            break
        if read[0].confidence > best[0].confidence:
            best = read
    return best


def test_bundled_model_has_both_scales_a_zoomed_one_and_the_default_threshold(predictor: Predictor) -> None:
    assert predictor.second_read_below == SECOND_READ_BELOW > 0 and SECOND_READ_ZOOM > 1
    for image in EXAMPLES:
        views = predictor.views(image)
        assert len(views) == 3, image.name
        (first, called, height), (other, other_called, _), (zoomed, zoomed_called, zoomed_height) = views
        # The router's scale first, then the other scale, then the router's scale zoomed: handwriting is read
        # bigger, and the zoomed view is bigger than the first.
        assert isinstance(called, bool) and other_called is not called and zoomed_called is called
        assert (first.shape[1] > other.shape[1]) == called, image.name
        assert zoomed.shape[0] >= first.shape[0] and zoomed.shape[1] >= first.shape[1], image.name
        assert zoomed.sum() > 1.1 * first.sum(), image.name  # more ink pixels: the glyphs are bigger
        assert zoomed_height == pytest.approx(height * SECOND_READ_ZOOM)


def test_the_zoom_is_the_predictors_own(predictor: Predictor) -> None:
    try:
        predictor.second_read_zoom = 1.3  # what benchmarks/second_read.py --zoom sets
        (_, _, height), _, (_, _, zoomed_height) = predictor.views(EXAMPLES[0])
        assert zoomed_height == pytest.approx(height * 1.3)
    finally:
        predictor.second_read_zoom = SECOND_READ_ZOOM
    with pytest.raises(ValueError, match="second_read_zoom must be positive"):
        Predictor(second_read_zoom=0)


@pytest.mark.parametrize("image", EXAMPLES, ids=lambda p: p.name)
def test_the_surest_read_is_kept_and_a_sure_read_is_not_repeated(predictor: Predictor, image: Path) -> None:
    reads = alone(predictor, image)
    first = reads[0][0]

    def check(result: Prediction, expected: tuple[Prediction, View]) -> None:
        read, view = expected
        assert (result.latex, result.image_size) == (read.latex, read.image_size)
        assert (result.handwritten, result.glyph_height) == (view.handwritten, view.glyph_height)
        assert result.confidence == pytest.approx(read.confidence)

    try:
        predictor.second_read_below = 1.01  # every read is unsure: every view, the surest kept
        surest = max(reads, key=lambda r: r[0].confidence)
        check(predictor.predict(image, beam=1), surest)
        assert kept(reads, 1.01) == surest
        predictor.second_read_below = 0.0  # off: one read, of the router's scale alone
        view = predictor.views(image)[0]
        check(predictor.predict(image, beam=1), (predictor.decode([view.pixels], beam=1)[0], view))
        predictor.second_read_below = first.confidence  # the first read exactly at the threshold: one read
        check(predictor.predict(image, beam=1), reads[0])
        for below in (first.confidence + 1e-6, max(r.confidence for r, _ in reads[:2]) + 1e-6):
            predictor.second_read_below = below  # unsure: read again, and again while still unsure
            check(predictor.predict(image, beam=1), kept(reads, below))
    finally:
        predictor.second_read_below = SECOND_READ_BELOW


def test_print_is_read_first_as_an_ensemble_of_its_scale_and_the_zoomed_one(predictor: Predictor) -> None:
    for image in EXAMPLES:
        views, reads = predictor.views(image), predictor.reads(image)
        shapes = [[v.pixels.shape for v in read] for read in reads]
        if views[0].handwritten:
            assert shapes == [[v.pixels.shape] for v in views], image.name
        else:
            assert shapes == [[views[0].pixels.shape, views[2].pixels.shape], [views[1].pixels.shape]], (
                image.name
            )
    # An ensemble averages its views' log-probabilities at every step: two copies of one view read as the view.
    pixels = predictor.views(EXAMPLES[0])[0].pixels
    single, double = predictor.decode([pixels, [pixels, pixels]], beam=3)
    assert single.latex == double.latex and single.confidence == pytest.approx(double.confidence, abs=1e-5)
    zoomed = predictor.decode([[pixels, predictor.views(EXAMPLES[0])[2].pixels]], beam=3)[0]
    assert zoomed.latex and zoomed.confidence != pytest.approx(single.confidence, abs=1e-5)


def test_a_batch_keeps_its_order_and_each_image_its_surest_read(predictor: Predictor, tmp_path: Path) -> None:
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
        # The kept read is one of the image's views, and says which.
        views = {(v.glyph_height, v.handwritten, v.pixels.shape) for v in predictor.views(result.image)}
        assert (result.glyph_height, result.handwritten, result.image_size) in views


def test_a_model_without_a_router_reads_its_one_scale_and_zoomed(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(resolve_model_dir(None), plain, ignore=shutil.ignore_patterns("router.*"))
    with pytest.warns(UserWarning, match="no router"):
        predictor = Predictor(plain, second_read_below=1.01)
    views = predictor.views(EXAMPLES[0])
    assert [v.handwritten for v in views] == [None, None]
    assert views[1].pixels.sum() > 1.1 * views[0].pixels.sum()
    result = predictor.predict(EXAMPLES[0], beam=1)
    assert result.handwritten is None and result.glyph_height in [v.glyph_height for v in views]
    with pytest.warns(UserWarning, match="no router"):
        once = Predictor(plain, second_read_below=1.01, second_read=False)  # the switch wins over a threshold
    assert once.second_read_below == 0 and len(once.views(EXAMPLES[0])) == 1


def test_cli_turns_second_reads_off(tmp_path: Path) -> None:
    runner = CliRunner()
    on = runner.invoke(app, ["predict", *map(str, EXAMPLES), "--beam", "1", "--json"])
    off = runner.invoke(app, ["predict", *map(str, EXAMPLES), "--beam", "1", "--json", "--no-second-read"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    on_rows = [json.loads(line) for line in on.stdout.splitlines()]
    off_rows = [json.loads(line) for line in off.stdout.splitlines()]
    assert len(on_rows) == len(off_rows) == len(EXAMPLES)
    predictor = Predictor(second_read=False)
    for row, image in zip(off_rows, EXAMPLES, strict=True):
        assert row["latex"] == predictor.predict(image, beam=1).latex
    # With second reads on, print is read first as an ensemble of two views, which need not be surer than the
    # router's scale alone; a later read only ever replaces an earlier, less sure one (tested above).
    assert all(0 < a["confidence"] <= 1 and a["latex"] for a in on_rows)
