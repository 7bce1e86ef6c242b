"""ONNX export: graphs with dynamic shapes, the onnxruntime adapter, and the same tokens as PyTorch on real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from test_predictor import one_thread, real_images, tiny_model_dir  # noqa: F401 (one_thread: autouse fixture)
from texlens.export import OnnxModel, check_export, ensure_onnx, export_onnx, flatten_state, unflatten_state
from texlens.models import load_model
from texlens.predictor import Predictor

MAX_LEN = 32
MODELS = ["resnet-transformer", "cnn-rnn"]


@pytest.fixture(scope="module", params=MODELS)
def exported(request: pytest.FixtureRequest, shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(model dir, ONNX dir, files) of a tiny random model of each kind, exported with int8 copies."""
    root = tmp_path_factory.mktemp(request.param)
    model_dir = tiny_model_dir(shared_data, root / "model", request.param)
    files = export_onnx(model_dir, root / "onnx", int8=True)
    return model_dir, root / "onnx", files


def test_files_are_valid_onnx(exported) -> None:
    _, onnx_dir, files = exported
    for name in ("encoder", "decoder_init", "decoder", "encoder_int8", "decoder_init_int8", "decoder_int8"):
        assert files[name].is_file()
        onnx.checker.check_model(str(files[name]))
    assert (onnx_dir / "config.json").is_file() and (onnx_dir / "vocab.json").is_file()
    graph = onnx.load(str(files["encoder"])).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    # Every reshape of a decoder step has its target shape folded: a constant, or sizes read once from the
    # state's inputs (the images' count for g hypotheses per image), not shape arithmetic per reshape.
    step = onnx.load(str(files["decoder"])).graph
    made_by = {out: node.op_type for node in step.node for out in node.output}
    constants = {t.name for t in step.initializer}
    targets = [node.input[1] for node in step.node if node.op_type == "Reshape"]
    assert targets and all(t in constants or t.startswith("fold_shape/") for t in targets), made_by


def test_adapter_matches_torch_on_new_shapes(exported) -> None:
    model_dir, onnx_dir, _ = exported
    model, _ = load_model(model_dir)
    # Batch, image size and prefix lengths that the export never saw.
    assert check_export(model, onnx_dir, steps=6) < 1e-3
    onnx_model = OnnxModel(onnx_dir)
    for height, width in ((32, 48), (64, 320)):
        images = torch.rand(1, 1, height, width)
        memory = onnx_model.encode(images)
        assert memory.shape[1] == np.prod(onnx_model.feature_shape(height, width))
        assert onnx_model.feature_shape(height, width) == model.feature_shape(height, width)
        torch.testing.assert_close(memory, model.encode(images), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("atrous", "shape"),
    [([False, False, True, False], (8, 40)), ([False, "height", True, False], (16, 40))],  # stride 8x8, 4x8
)
def test_atrous_encoder_exports(tmp_path: Path, atrous, shape) -> None:
    """A model with a trous stages exports, with its finer map and scaled positions."""
    from texlens.latex import Vocab
    from texlens.models import build_model, rebuild, save_model

    vocab = Vocab([f"t{i}" for i in range(20)])
    torch.manual_seed(0)
    strided = build_model("resnet-transformer", len(vocab), preset="tiny")
    model = rebuild(strided, encoder={"atrous": atrous}).eval()
    export_onnx(save_model(model, vocab, tmp_path / "model"), tmp_path / "onnx", int8=False)
    assert check_export(model, tmp_path / "onnx", steps=4) < 1e-3
    onnx_model = OnnxModel(tmp_path / "onnx")
    assert onnx_model.feature_shape(64, 320) == model.feature_shape(64, 320) == shape
    images = torch.rand(1, 1, 64, 320)
    torch.testing.assert_close(onnx_model.encode(images), model.encode(images), atol=1e-4, rtol=1e-4)


def test_reorder_state_selects_rows(exported) -> None:
    _, onnx_dir, _ = exported
    onnx_model = OnnxModel(onnx_dir)
    state = onnx_model.init_state(onnx_model.encode(torch.rand(3, 1, 32, 64)))
    _, state, _ = onnx_model.step(torch.tensor([5, 6, 7]), state)
    picked = onnx_model.reorder_state(state, torch.tensor([2, 2, 0]))
    kept = onnx_model.reorder_state(state, torch.tensor([2, 0]), images=torch.tensor([2, 0]))
    for k, (old, new, both) in enumerate(zip(state.leaves, picked.leaves, kept.leaves, strict=True)):
        if not old.ndim:
            assert new == both == old
        elif k in onnx_model.static:  # one row per image: stays unless images are picked
            assert new is old
            np.testing.assert_array_equal(both, old[[2, 0]])
        else:
            np.testing.assert_array_equal(new, old[[2, 2, 0]])
            np.testing.assert_array_equal(both, old[[2, 0]])
    assert onnx_model.static and onnx_model.shared_static


def test_onnx_backend_gives_the_torch_tokens_on_real_images(exported, shared_data: Path) -> None:
    model_dir, onnx_dir, _ = exported
    images = real_images(shared_data, 10)
    torch_results = list(Predictor(model_dir, max_len=MAX_LEN).predict_paths(images, batch_size=4))
    onnx_results = list(
        Predictor(onnx_dir, backend="onnx", max_len=MAX_LEN, num_threads=1).predict_paths(
            images, batch_size=4
        )
    )
    assert [r.tokens for r in onnx_results] == [r.tokens for r in torch_results]
    for a, b in zip(torch_results, onnx_results, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
    beam_t = Predictor(model_dir, max_len=MAX_LEN).predict(images[0], beam=3)
    beam_o = Predictor(onnx_dir, backend="onnx", max_len=MAX_LEN, num_threads=1).predict(images[0], beam=3)
    assert beam_o.tokens == beam_t.tokens
    int8 = list(
        Predictor(onnx_dir, backend="onnx-int8", max_len=MAX_LEN, num_threads=1).predict_paths(images[:3])
    )
    assert all(r.error is None and r.tokens for r in int8)


def test_exports_before_version_3_keep_a_state_row_per_hypothesis(
    exported, shared_data: Path, tmp_path: Path
) -> None:
    """An export without ``export_version`` (made before beams shared their image's state) is decoded with the
    whole state copied per hypothesis, and reads what a current export reads."""
    _, onnx_dir, _ = exported
    old = tmp_path / "old"
    shutil.copytree(onnx_dir, old)
    meta = json.loads((old / "onnx.json").read_text())
    del meta["export_version"]
    (old / "onnx.json").write_text(json.dumps(meta))
    assert not OnnxModel(old).shared_static
    images = real_images(shared_data, 4)
    read = [
        [
            r.tokens
            for r in Predictor(d, backend="onnx", max_len=MAX_LEN, num_threads=1).predict_paths(
                images, beam=3
            )
        ]
        for d in (onnx_dir, old)
    ]
    assert read[0] == read[1]


def test_ensure_onnx_exports_once_into_the_cache(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    model_dir, onnx_dir, _ = exported
    assert ensure_onnx(onnx_dir) == onnx_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = ensure_onnx(model_dir)
    assert cached.is_relative_to(tmp_path) and (cached / "decoder.onnx").is_file()
    stamp = (cached / "decoder.onnx").stat().st_mtime_ns
    assert ensure_onnx(model_dir) == cached and (cached / "decoder.onnx").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="--int8"):
        OnnxModel(cached, int8=True)
    result = Predictor(model_dir, backend="onnx", max_len=8, num_threads=1).predict(
        real_images(shared_data, 1)[0]
    )
    assert result.tokens


def test_state_flattening_round_trips() -> None:
    state = {"a": [torch.zeros(2, 3), torch.ones(2)], "pos": 4, "h": torch.full((2, 5), 2.0)}
    names, leaves, spec = flatten_state(state)
    assert names == ["a.0", "a.1", "pos", "h"]
    rebuilt = unflatten_state(spec, leaves)
    assert rebuilt.keys() == state.keys() and rebuilt["pos"] == 4
    assert all(x is y for x, y in zip(rebuilt["a"], state["a"], strict=True))
    with pytest.raises(TypeError, match="str"):
        flatten_state({"name": "x"})


@pytest.mark.slow
def test_bundled_model_onnx_matches_torch_on_50_images(shared_data: Path, tmp_path: Path) -> None:
    from texlens.predictor import resolve_model_dir

    try:
        model_dir = resolve_model_dir(None)
    except FileNotFoundError:
        pytest.skip("no bundled model is installed yet")
    export_onnx(model_dir, tmp_path / "onnx")
    images = real_images(shared_data, 50)
    torch_tokens = [r.tokens for r in Predictor(model_dir, num_threads=1).predict_paths(images)]
    onnx_predictor = Predictor(tmp_path / "onnx", backend="onnx", num_threads=1)
    onnx_tokens = [r.tokens for r in onnx_predictor.predict_paths(images)]
    # Float rounding may flip a near-tie argmax on at most one image; anything more is an export bug.
    same = sum(a == b for a, b in zip(torch_tokens, onnx_tokens, strict=True))
    assert same >= len(images) - 1, f"{len(images) - same} of {len(images)} images decode differently"


def test_export_takes_the_handwriting_router_along(shared_data: Path, tmp_path: Path) -> None:
    """An exported directory read as a model reads handwriting as the original does: its router goes along."""
    from texlens.models.router import (
        ROUTER_CONFIG,
        ROUTER_WEIGHTS,
        HandwritingRouter,
        RouterConfig,
        save_router,
    )

    model_dir = tiny_model_dir(shared_data, tmp_path / "model", "resnet-transformer")
    save_router(HandwritingRouter(RouterConfig(norm="group")).eval(), model_dir)
    files = export_onnx(model_dir, tmp_path / "onnx")
    assert files["router"] == tmp_path / "onnx" / ROUTER_WEIGHTS
    assert (tmp_path / "onnx" / ROUTER_CONFIG).read_bytes() == (model_dir / ROUTER_CONFIG).read_bytes()
    predictor = Predictor(tmp_path / "onnx", backend="onnx")
    assert predictor.router is not None and predictor.router.config.norm == "group"
    # Without a router there is none to take along.
    bare = tiny_model_dir(shared_data, tmp_path / "bare", "resnet-transformer")
    assert "router" not in export_onnx(bare, tmp_path / "bare_onnx")
    assert not (tmp_path / "bare_onnx" / ROUTER_WEIGHTS).exists()
