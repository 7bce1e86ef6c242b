"""Predictor on a tiny random-weight model and real IM2LATEX images: inputs, broken files, order, JSON, beam, CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from texlens.image import ImageError, load_image
from texlens.latex import Vocab
from texlens.models import build_model, save_model
from texlens.predictor import Prediction, Predictor, resolve_model_dir

MAX_LEN = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny models gain nothing from more, and CI's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_images(shared_data: Path, n: int) -> list[Path]:
    """The first ``n`` IM2LATEX-100K validation images (by their line in val.matching.txt)."""
    folder = shared_data / "im2latex100k" / "images_val"
    lines = (shared_data / "im2latex100k" / "val.matching.txt").read_text().split("\n")
    return [folder / line.split()[0] for line in lines[:n]]


def tiny_model_dir(shared_data: Path, out: Path, name: str = "resnet-transformer") -> Path:
    """A tiny random-weight model whose vocabulary comes from real IM2LATEX formulas."""
    formulas = (shared_data / "im2latex100k" / "val.formulas.norm.txt").read_text().split("\n")[:300]
    vocab = Vocab.build(formulas)
    torch.manual_seed(0)
    return save_model(build_model(name, len(vocab), preset="tiny"), vocab, out)


@pytest.fixture(scope="module")
def model_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(shared_data, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir, max_len=MAX_LEN, num_threads=1)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """Three files that are not usable images: empty, text named .png, a PNG cut in half."""
    folder = tmp_path_factory.mktemp("broken")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("x^2 + y^2 = z^2\n")
    truncated = folder / "truncated.png"
    data = real_images(shared_data, 1)[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"empty": empty, "text": text, "truncated": truncated}


def test_every_input_kind_reads_the_same_pixels(predictor: Predictor, shared_data: Path) -> None:
    path = real_images(shared_data, 1)[0]
    grey = load_image(path)
    by_path = predictor.predict(path)
    assert isinstance(by_path, Prediction)
    assert by_path.image == str(path) and by_path.error is None
    assert by_path.tokens and by_path.latex
    assert len(by_path.token_confidences) == len(by_path.tokens)
    assert 0.0 < by_path.confidence <= 1.0 and by_path.ms > 0
    others = [
        str(path),
        path.read_bytes(),
        grey,
        np.asarray(grey),
        np.asarray(Image.open(path).convert("RGB")),
    ]
    for source in others:
        result = predictor.predict(source)
        assert result.tokens == by_path.tokens, type(source)
    assert by_path.image_size == predictor.preprocess(path).shape
    as_list = predictor.predict([path.read_bytes(), grey])
    assert isinstance(as_list, list) and [r.tokens for r in as_list] == [by_path.tokens] * 2
    assert as_list[0].image is None


def test_single_broken_image_raises(predictor: Predictor, broken: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match="empty"):
        predictor.predict(broken["empty"])


def test_broken_images_give_errors_and_the_batch_goes_on(
    predictor: Predictor, shared_data: Path, broken: dict[str, Path]
) -> None:
    good = real_images(shared_data, 7)
    paths = [
        good[0],
        broken["empty"],
        good[1],
        good[2],
        broken["text"],
        good[3],
        broken["truncated"],
        *good[4:],
    ]
    paths.append(Path("/nonexistent/formula.png"))
    results = list(predictor.predict_paths(paths, batch_size=3))
    assert [r.image for r in results] == [str(p) for p in paths]
    bad = {str(broken[k]) for k in broken} | {"/nonexistent/formula.png"}
    for path, result in zip(paths, results, strict=True):
        if str(path) in bad:
            assert result.error and not result.latex, path
            assert result.to_json() == {"image": str(path), "error": result.error}
        else:
            assert result.error is None and result.tokens, path
            # Results are sorted by width for batching and put back: each must describe its own image.
            assert result.image_size == predictor.preprocess(path).shape
    assert "empty" in results[1].error
    assert "truncated" in results[6].error or "corrupt" in results[6].error


def test_identical_images_in_one_batch_get_identical_results(predictor: Predictor, shared_data: Path) -> None:
    a, b, c = real_images(shared_data, 3)
    results = list(predictor.predict_paths([a, b, a, c, a], batch_size=8))
    assert results[0].tokens == results[2].tokens == results[4].tokens


def test_json_shape(predictor: Predictor, shared_data: Path) -> None:
    result = predictor.predict(real_images(shared_data, 1)[0])
    data = json.loads(json.dumps(result.to_json()))
    assert list(data) == [
        "image",
        "latex",
        "confidence",
        "tokens",
        "token_confidences",
        "alternatives",
        "ms",
        "handwritten",
        "glyph_height",
    ]
    assert data["latex"] == result.latex and data["tokens"] == result.tokens
    assert all(0.0 <= c <= 1.0 for c in data["token_confidences"])


def test_beam_returns_alternatives(predictor: Predictor, shared_data: Path) -> None:
    path = real_images(shared_data, 1)[0]
    greedy = predictor.predict(path, beam=1)
    beam = predictor.predict(path, beam=4)
    assert beam.tokens and beam.alternatives
    assert len(beam.alternatives) <= 3
    assert all(isinstance(latex, str) and 0.0 <= conf <= 1.0 for latex, conf in beam.alternatives)
    assert beam.latex not in [latex for latex, _ in beam.alternatives]
    assert greedy.alternatives == []
    first = beam.to_json()["alternatives"][0]
    assert first[0] == beam.alternatives[0][0] and first[1] == pytest.approx(
        beam.alternatives[0][1], abs=1e-6
    )


def test_default_decoding_is_the_beam(predictor: Predictor, shared_data: Path) -> None:
    """Without ``beam``, the Predictor (so predict, eval, the API and the UI) reads with DEFAULT_BEAM, a beam."""
    from texlens import DEFAULT_BEAM

    assert DEFAULT_BEAM > 1
    path = real_images(shared_data, 1)[0]
    default, beam = predictor.predict(path), predictor.predict(path, beam=DEFAULT_BEAM)
    assert (default.tokens, default.alternatives) == (beam.tokens, beam.alternatives)
    assert default.alternatives  # greedy decoding has none


def test_attention_maps_cover_the_image(predictor: Predictor, shared_data: Path, tmp_path: Path) -> None:
    from texlens.visualize import save_attention_map

    result = predictor.predict(real_images(shared_data, 2)[1], attention=True)
    assert result.attention is not None and result.pixels is not None
    h, w = predictor.model.feature_shape(*result.image_size)
    assert result.attention.shape == (len(result.tokens), h, w)
    assert np.all(result.attention >= 0) and np.all(result.attention.sum((1, 2)) <= 1.0 + 1e-4)
    out = save_attention_map(result, tmp_path / "attention.png")
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 200 and png.height > 100
    assert predictor.predict(real_images(shared_data, 1)[0]).attention is None


def test_missing_model_says_how_to_pass_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--model"):
        resolve_model_dir("no-such-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "missing" / "dir"))
    with pytest.raises(ValueError, match="backend"):
        Predictor(tmp_path, backend="tensorflow")


def test_preprocess_config_is_read_from_config_json(
    model_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    import shutil

    copy = Path(shutil.copytree(model_dir, tmp_path / "model"))
    config = json.loads((copy / "config.json").read_text())
    config["preprocess"] = {"target_glyph_height": 20.0}
    (copy / "config.json").write_text(json.dumps(config))
    from texlens.predictor import read_preprocess_config

    assert read_preprocess_config(copy).target_glyph_height == 20.0
    config["preprocess"] = {"glyph": 3}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown preprocess"):
        read_preprocess_config(copy)


def test_cli_predict_json(model_dir: Path, shared_data: Path, broken: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from texlens.cli import app

    images = [*real_images(shared_data, 2), broken["text"]]
    args = ["predict", "--json", "--model", str(model_dir), *map(str, images)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    assert "latex" in lines[0] and "confidence" in lines[0] and "latex" in lines[1]
    assert set(lines[2]) == {"image", "error"}


def test_cli_predict_reads_folders_and_standard_input(
    model_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from texlens.cli import app

    first, second = real_images(shared_data, 2)
    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "b.PNG").write_bytes(first.read_bytes())
    (folder / "a.png").write_bytes(second.read_bytes())
    (folder / "notes.txt").write_text("not an image, and not named like one: left alone\n")
    (folder / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    args = ["predict", "--json", "--model", str(model_dir)]
    result = CliRunner().invoke(
        app, [*args, str(folder), "-", str(tmp_path / "empty")], input=first.read_bytes()
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    # The folder's images by name, then standard input, then the folder without images, reported.
    names = [str(folder / "a.png"), str(folder / "b.PNG"), "-", str(tmp_path / "empty")]
    assert [line["image"] for line in lines] == names
    assert lines[2]["latex"] == lines[1]["latex"]  # stdin held the same picture as b.PNG
    assert lines[3]["error"] == "a folder, not an image file"
    empty = CliRunner().invoke(app, [*args, "-"], input=b"")
    assert empty.exit_code == 1 and json.loads(empty.stdout)["error"].startswith("the file is empty")
    twice = CliRunner().invoke(app, [*args, "-", "-"], input=first.read_bytes())
    assert twice.exit_code == 1 and "only once" in twice.output


def test_bytes_stream_input(predictor: Predictor, shared_data: Path) -> None:
    path = real_images(shared_data, 1)[0]
    assert predictor.predict(io.BytesIO(path.read_bytes())).tokens == predictor.predict(path).tokens
