"""The handwriting router: padding-blind, saved and loaded safely, trained on real images, and used by the
Predictor to read handwriting at its own glyph height (training reads handwritten sets at that height too)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from test_training import logged
from texlens.image import PreprocessConfig, load_image, preprocess
from texlens.models.router import (
    ROUTER_CONFIG,
    ROUTER_WEIGHTS,
    HandwritingRouter,
    RouterConfig,
    load_router,
    save_router,
    window,
)
from texlens.predictor import Predictor, resolve_model_dir
from texlens.training import DatasetSpec, FormulaDataModule, load_config, preprocess_config_for, train

REPO = Path(__file__).resolve().parents[1]


def test_router_answers_do_not_depend_on_padding_or_batch():
    torch.manual_seed(0)
    router = HandwritingRouter().eval()
    image = torch.zeros(1, 1, 41, 99)
    image[0, 0, 8:33, 5:95] = (torch.rand(25, 90) > 0.6).float()
    padded = torch.zeros(1, 1, 64, 160)
    padded[..., :41, :99] = image
    other = torch.rand(1, 1, 64, 160)
    with torch.no_grad():
        alone = router(image)
        in_padding = router(padded, [(41, 99)])
        in_batch = router(torch.cat([other, padded]), [(64, 160), (41, 99)])
    torch.testing.assert_close(alone, in_padding, rtol=0, atol=1e-4)
    torch.testing.assert_close(alone[0], in_batch[1], rtol=0, atol=1e-4)
    assert not torch.allclose(in_batch[0], alone[0])  # and it does look at the ink


def test_router_reads_a_window_the_middle_in_use_a_random_one_in_training():
    pixels = np.arange(100 * 700, dtype=np.float32).reshape(100, 700)
    middle = window(pixels, (64, 256))
    assert middle.shape == (64, 256) and middle[0, 0] == pixels[18, 222]
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        part = window(pixels, (64, 256), rng)
        assert part.shape == (64, 256)
        row, col = divmod(int(part[0, 0]), 700)
        np.testing.assert_array_equal(part, pixels[row : row + 64, col : col + 256])
        starts.add((row, col))
    assert len(starts) > 10
    small = pixels[:40, :100]
    assert np.array_equal(window(small, (64, 256), rng), small)  # smaller than the window: all of it
    padded = window(small, (64, 256), rng, pad=True)  # ... or all of it on a blank window of the full size
    assert padded.shape == (64, 256) and np.array_equal(padded[:40, :100], small) and not padded[40:].any()
    assert np.array_equal(window(pixels, (64, 256), pad=True), middle)  # a large one needs no padding
    router = HandwritingRouter().eval()
    with torch.no_grad():
        expected = bool(router(torch.from_numpy(middle)[None, None])[0] > 0)
    assert router.is_handwritten(pixels) == expected


def test_router_files_round_trip_and_broken_ones_are_refused(tmp_path):
    router = HandwritingRouter().eval()
    save_router(router, tmp_path)
    loaded = load_router(tmp_path)
    x = torch.rand(2, 1, 32, 64)
    torch.testing.assert_close(loaded(x), router(x))
    assert load_router(tmp_path / "nothing") is None
    (tmp_path / ROUTER_CONFIG).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a router config"):
        load_router(tmp_path)
    (tmp_path / ROUTER_CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="half a router"):
        load_router(tmp_path)


def test_group_norm_router_calls_an_image_alike_in_any_batch_and_round_trips(tmp_path):
    torch.manual_seed(0)
    router = HandwritingRouter(RouterConfig(norm="group")).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in router.modules())
    windows = torch.rand(3, 1, 64, 256)
    with torch.no_grad():
        alone = router(windows[1:2])
        together = router(windows)
    torch.testing.assert_close(alone[0], together[1], rtol=0, atol=1e-5)
    save_router(router, tmp_path)
    loaded = load_router(tmp_path)
    assert loaded.config.norm == "group"
    torch.testing.assert_close(loaded(windows), together)
    # Group norm's statistics take in padding, so it reads a small image on a whole window, as in training.
    assert router.config.full_window and not RouterConfig().full_window
    small = (np.random.default_rng(0).random((30, 90)) > 0.7).astype(np.float32)
    with torch.no_grad():
        on_window = router(torch.from_numpy(window(small, (64, 256), pad=True))[None, None])[0]
        unpadded = router(torch.from_numpy(small)[None, None])[0]
    assert router.is_handwritten(small) == bool(on_window > 0)
    assert not torch.allclose(on_window, unpadded)  # which is why the padding must be the same everywhere
    with pytest.raises(ValueError, match="router norm must be 'batch' or 'group'"):
        RouterConfig(norm="layer")


def test_router_training_refuses_unknown_model_options(tmp_path):
    cfg = load_config(
        REPO / "configs" / "router.yaml", ["model_options={depth: 3}", f"output_dir={tmp_path}"]
    )
    with pytest.raises(
        ValueError, match=r"\['depth'\] are not router settings \(known: norm, widths, window\)"
    ):
        train(cfg)


def test_handwritten_sets_are_read_at_the_handwriting_height(shared_data):
    crohme = shared_data / "crohme" / "test_2014_caption.txt"
    cfg = load_config(
        None,
        [
            f"train=[{{path: '{crohme}', limit: 8, handwritten: true}}, {{path: '{crohme}', limit: 8}}]",
            f"val=[{{path: '{crohme}', limit: 8, handwritten: true}}]",
            "preprocess.handwriting_glyph_height=14",
        ],
    )
    assert preprocess_config_for(cfg, cfg.train[0]).target_glyph_height == 14
    assert preprocess_config_for(cfg, cfg.train[1]).target_glyph_height == 9.4
    from texlens.training import _read_spec, build_vocab

    samples = [_read_spec(spec) for spec in cfg.train]
    data = FormulaDataModule(cfg, build_vocab(cfg, samples), samples, [_read_spec(cfg.val[0])])
    handwritten, printed = data.train_sets[0].load(0), data.train_sets[1].load(0)  # the same image
    assert handwritten.shape[1] > 1.3 * printed.shape[1]
    assert data.val_sets[0].load(0).shape == handwritten.shape
    with pytest.raises(ValueError, match="handwriting_glyph_height must be a positive"):
        PreprocessConfig(handwriting_glyph_height=0)
    with pytest.raises(ValueError, match="offset and limit"):
        _read_spec(DatasetSpec(str(crohme), offset=-1))
    assert [s.latex for s in _read_spec(DatasetSpec(str(crohme), offset=3, limit=2))] == [
        s.latex for s in samples[0][3:5]
    ]


def bundled_without_router(tmp_path: Path) -> Path:
    """A copy of the bundled model without its router (the model reads every image at the printed scale)."""
    plain = tmp_path / "plain"
    shutil.copytree(resolve_model_dir(None), plain, ignore=shutil.ignore_patterns("router.*"))
    return plain


def test_router_learns_handwriting_from_print_and_the_predictor_uses_it(shared_data, tmp_path):
    crohme, im2latex = shared_data / "crohme", shared_data / "im2latex100k"
    out = tmp_path / "router"
    torch.set_num_threads(1)
    cfg = load_config(
        REPO / "configs" / "router.yaml",
        [
            f"train=[{{path: '{crohme / 'train_caption.txt'}', limit: 300, handwritten: true, augment: 1.0}},"
            f" {{path: '{im2latex}', limit: 300}}]",
            f"val=[{{path: '{crohme / 'test_2014_caption.txt'}', limit: 40, handwritten: true, name: hw}},"
            f" {{path: '{im2latex}', offset: 300, limit: 40, name: printed}},"
            f" {{path: '{im2latex}', offset: 340, limit: 8, name: watched, select: false}}]",
            f"output_dir={out}",
            "batch_size=16",
            "epoch_size=480",
            "max_steps=150",
            "warmup_steps=5",
            "val_every_n_steps=50",
            "checkpoint_every_n_steps=50",
            "num_workers=0",
            "val_samples=40",
        ],
    )
    model_dir = train(cfg)
    assert (model_dir / ROUTER_WEIGHTS).is_file() and (model_dir / ROUTER_CONFIG).is_file()
    assert logged(out, "val/hw/accuracy") and logged(out, "val/printed/accuracy")
    # the watched set is logged, and the mean that chooses the checkpoint counts only the other two
    assert len(logged(out, "val/watched/accuracy")) == len(logged(out, "val/accuracy"))
    for (step, mean), (_, hw), (_, pr) in zip(
        logged(out, "val/accuracy"),
        logged(out, "val/hw/accuracy"),
        logged(out, "val/printed/accuracy"),
        strict=True,
    ):
        assert mean == pytest.approx((hw + pr) / 2), step
    assert max(value for _, value in logged(out, "val/accuracy")) >= 0.9
    assert json.loads((out / "summary.json").read_text())["best_score"] >= 0.9
    shipped = load_config(REPO / "configs" / "router.yaml")
    handwritten = [i for i, spec in enumerate(shipped.train) if spec.handwritten]
    no_handwriting = [f"train.{i}.handwritten=false" for i in handwritten]
    with pytest.raises(ValueError, match="handwritten and printed"):
        train(load_config(REPO / "configs" / "router.yaml", [*no_handwriting, f"output_dir={out}2"]))

    # Attach it to (a copy of) the bundled model, which is told to read handwriting at 14 px.
    bundled = resolve_model_dir(None)
    model = tmp_path / "model"
    shutil.copytree(bundled, model)
    for name in (ROUTER_WEIGHTS, ROUTER_CONFIG):  # the bundled model's own router: not this test's
        (model / name).unlink(missing_ok=True)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["preprocess"] = {**config.get("preprocess", {}), "handwriting_glyph_height": 14}
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.warns(UserWarning, match="no router"):
        Predictor(model)  # a handwriting height without a router is read at the printed scale, and said so
    for name in (ROUTER_WEIGHTS, ROUTER_CONFIG):
        shutil.copy(model_dir / name, model / name)

    handwriting = crohme / "test_2014" / "RIT_2014_100_0.png"  # not among the 40 validation images
    printed = sorted((im2latex / "images_val").glob("*.png"))[400]
    # The router's scale alone (second reads: tests/test_second_read.py).
    plain = Predictor(bundled_without_router(tmp_path), second_read=False)
    routed = Predictor(model, second_read=False)
    hw_plain, hw_routed = plain.predict(handwriting), routed.predict(handwriting)
    pr_plain, pr_routed = plain.predict(printed), routed.predict(printed)
    assert hw_plain.handwritten is None and hw_plain.to_json()["handwritten"] is None
    assert hw_routed.handwritten is True and hw_routed.to_json()["handwritten"] is True
    assert pr_routed.handwritten is False
    # Handwriting is read bigger (14 / 9.4 of the printed scale); print exactly as before.
    assert hw_routed.image_size[1] > 1.3 * hw_plain.image_size[1]
    assert pr_routed.image_size == pr_plain.image_size and pr_routed.latex == pr_plain.latex
    expected = preprocess(load_image(handwriting), PreprocessConfig(target_glyph_height=14))
    np.testing.assert_array_equal(routed.preprocess(handwriting), expected)
