"""Training end to end on real handwriting (CROHME): loss falls, kill -9 + resume, MLM then fine-tuning."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from texlens.training import (
    DatasetSpec,
    LitImageToLatex,
    TrainConfig,
    load_config,
    load_initial,
    lr_factor,
    teacher_forcing_prob,
    train,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def tiny_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    """The tiny config on the real data folder, writing into ``out``."""
    crohme = data / "crohme"
    return [
        f"train=[{{path: '{crohme / 'train_caption.txt'}', limit: 200, name: crohme_train}}]",
        f"val=[{{path: '{crohme / 'test_2014_caption.txt'}', limit: 24, name: crohme_test}}]",
        f"output_dir={out}",
        *extra,
    ]


def logged(out: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of one logged metric over every CSV log version of a run."""
    rows = []
    for f in sorted((out / "logs").glob("version_*/metrics.csv")):
        with open(f, newline="") as fh:
            rows += [(int(r["step"]), float(r[key])) for r in csv.DictReader(fh) if r.get(key)]
    return rows


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ---------------------------------------------------------------- config


def test_load_config_types_overrides(tmp_path):
    cfg = load_config(
        TINY,
        [
            "lr=1e-3",  # a string to YAML 1.1, a float here
            "max_steps=7",
            "model_options.d_model=48",
            "train.0.weight=2",
            "channels_last=true",
            "devices=2",
            "max_time_minutes=1.5",
            "init_from=",
        ],
    )
    assert isinstance(cfg, TrainConfig)
    assert cfg.lr == 1e-3 and cfg.max_steps == 7 and cfg.channels_last is True and cfg.devices == 2
    assert cfg.model_options == {"d_model": 48}
    assert isinstance(cfg.train[0], DatasetSpec) and cfg.train[0].weight == 2.0 and cfg.train[0].limit == 200
    assert cfg.max_time_minutes == 1.5 and cfg.init_from is None
    assert load_config(None, ["train=[a/b, {path: c, weight: 3}]"]).train == [
        DatasetSpec("a/b"),
        DatasetSpec("c", 3.0),
    ]
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(TINY, ["learning_rate=1"])
    with pytest.raises(ValueError, match="integer"):
        load_config(TINY, ["max_steps=1.5"])
    with pytest.raises(ValueError, match="schedule"):
        load_config(TINY, ["schedule=exponential"])
    with pytest.raises(ValueError, match="select: false"):
        load_config(TINY, ["val.0.select=false"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config(TINY, ["lr"])


def test_a_config_extends_another_and_changes_some_keys(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "stage1.yaml").write_text(
        "lr: 1.0e-3\nmax_steps: 100\nseed: 1\npreprocess: {target_glyph_height: 9.4, handwriting_glyph_height: 14}\n"
        "train: [a, {path: b, weight: 2}]\nmodel_options: {d_model: 64, n_layers: 2}\n"
    )
    (tmp_path / "stage2.yaml").write_text(
        "extends: base/stage1.yaml\nseed: 2\npreprocess: {handwriting_glyph_height: 16}\ntrain: [c]\n"
    )
    (tmp_path / "stage3.yaml").write_text(
        "extends: stage2.yaml\nmax_steps: 300\nmodel_options: {d_model: 96}\n"
    )
    cfg = load_config(tmp_path / "stage3.yaml", ["lr=2e-4"])
    assert (cfg.lr, cfg.max_steps, cfg.seed) == (2e-4, 300, 2)
    assert cfg.preprocess == {"target_glyph_height": 9.4, "handwriting_glyph_height": 16}  # merged key by key
    assert cfg.model_options == {"d_model": 96, "n_layers": 2}
    assert cfg.train == [DatasetSpec("c")]  # a list replaces the parent's
    # What it resolves to is the same as writing every key out.
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    assert load_config(flat) == cfg

    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\nseed: 3\n")
    with pytest.raises(ValueError, match="extends it back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml: no such training config .extended by"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "odd.yaml").write_text("extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ValueError, match="extends takes one config file"):
        load_config(tmp_path / "odd.yaml")
    (tmp_path / "typo.yaml").write_text("extends: stage2.yaml\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(tmp_path / "typo.yaml")


def test_each_training_set_can_have_its_own_augmentation_strength():
    from texlens.training import _augmenters

    cfg = load_config(
        None,
        ["augment=0.5", "train=[a, {path: b, augment: 0}, {path: c, augment: 1.0}, {path: d, augment: 0.5}]"],
    )
    assert [spec.augment for spec in cfg.train] == [None, 0.0, 1.0, 0.5]
    a, b, c, d = _augmenters(cfg)
    assert b is None  # 0 switches it off for that set only
    # the config's strength: one stream, the run's seed
    assert a is d and a.strength == 0.5 and a.seed == cfg.seed
    assert c.strength == 1.0 and c.seed != a.seed
    assert all(x is None for x in _augmenters(load_config(None, ["augment=0", "train=[a, b]"])))
    with pytest.raises(ValueError, match="augment must be >= 0"):
        load_config(None, ["train=[{path: a, augment: -1}]"])  # fails as the config loads


def test_init_from_takes_model_options_that_keep_the_weights():
    """With init_from, model_options may switch the encoder's stages to a trous (a finer map, same weights)."""
    from texlens.latex import Vocab
    from texlens.models import build_model
    from texlens.training import _build_model

    vocab = Vocab([f"t{i}" for i in range(20)])
    initial = build_model("resnet-transformer", len(vocab), preset="tiny")
    atrous = ["model_options={encoder: {atrous: [false, false, true, false]}}"]
    model = _build_model(load_config(TINY, [*atrous, "dropout=0.2"]), vocab, initial)
    assert model.encoder.config.atrous == (False, False, True, False) and model.config.dropout == 0.2
    assert all(torch.equal(v, initial.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="changes the model's weights"):
        _build_model(load_config(TINY, ["model_options.d_model=48"]), vocab, initial)


def test_every_config_in_the_repo_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train and cfg.val, path


def test_importing_texlens_bounds_onednn_primitive_cache_unless_the_user_set_it():
    # Each distinct shape keeps a oneDNN primitive; 1024 of them grew a training process by gigabytes.
    code = "import os, texlens; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "256"
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "64"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "64"


def test_validation_reads_its_images_in_the_training_process(shared_data):
    # A worker forked per validation copied most of a long run's heap (3.7 GB) and outlived the validation.
    from texlens.training import FormulaDataModule, _read_spec, build_vocab

    crohme = shared_data / "crohme" / "test_2014_caption.txt"
    cfg = load_config(
        None, [f"train=[{{path: '{crohme}', limit: 8}}]", f"val=[{{path: '{crohme}', limit: 8}}]"]
    )
    cfg.num_workers = 1
    samples = [_read_spec(spec) for spec in cfg.train]
    data = FormulaDataModule(cfg, build_vocab(cfg, samples), samples, [_read_spec(cfg.val[0])])
    assert data.train_dataloader().num_workers == 1
    (val,) = data.val_dataloader()
    assert val.num_workers == 0
    assert sum(batch.images.shape[0] for batch in val) == 8


def test_schedules():
    cfg = TrainConfig(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    linear = TrainConfig(warmup_steps=10, max_steps=110, min_lr_ratio=0.0, schedule="linear")
    assert lr_factor(35, linear) == pytest.approx(0.75)
    tf = TrainConfig(teacher_forcing="scheduled", teacher_forcing_floor=0.4, teacher_forcing_steps=100)
    assert [teacher_forcing_prob(s, tf) for s in (0, 50, 100, 500)] == pytest.approx([1.0, 0.7, 0.4, 0.4])
    assert teacher_forcing_prob(10, TrainConfig(teacher_forcing="free")) == 0.0


# ---------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def transformer_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "run"
    torch.set_num_threads(1)
    # Handwriting read at its own glyph height (12 px instead of 9.4): the setting must reach the export.
    crohme = shared_data / "crohme"
    # A second validation set that is watched only (select: false): logged, but not in the checkpoint-choosing mean.
    val = (
        f"val=[{{path: '{crohme / 'test_2014_caption.txt'}', limit: 24, name: crohme_test}},"
        f" {{path: '{crohme / 'train_caption.txt'}', offset: 200, limit: 8, name: watched, select: false}}]"
    )
    extra = [
        val,
        "preprocess.handwriting_glyph_height=12",
        "train.0.handwritten=true",
        "val.0.handwritten=true",
    ]
    model_dir = train(load_config(TINY, tiny_overrides(shared_data, out, *extra)))
    return out, model_dir


def test_resnet_transformer_trains_and_exports(transformer_run):
    from texlens.models import load_model

    out, model_dir = transformer_run
    losses = [v for _, v in logged(out, "train/loss")]
    assert len(losses) >= 6
    assert mean(losses[-3:]) < mean(losses[:2]) - 0.5  # the loss falls
    assert logged(out, "val/edit_similarity") and logged(out, "val/crohme_test/bleu4")
    # the watched set is logged but only the selecting set makes the mean that picks best.ckpt
    assert len(logged(out, "val/watched/edit_similarity")) == len(logged(out, "val/edit_similarity"))
    assert logged(out, "val/edit_similarity") == logged(out, "val/crohme_test/edit_similarity")
    assert logged(out, "val/loss") == logged(out, "val/crohme_test/loss")
    assert logged(out, "val/loss") != logged(out, "val/watched/loss")
    model, vocab = load_model(model_dir)
    assert model.name == "resnet-transformer" and len(vocab) == model.config.vocab_size
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    # the exported weights are the best checkpoint's, and a .ckpt can seed another run too
    from_ckpt, ckpt_vocab = load_initial(out / "checkpoints" / "best.ckpt")
    assert ckpt_vocab.itos == vocab.itos
    for key, value in model.state_dict().items():
        assert torch.equal(value, from_ckpt.state_dict()[key]), key
    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config(TINY, tiny_overrides(Path(out).parents[1] / "unused", out)))


def test_export_averages_weights_with_other_checkpoints(transformer_run, tmp_path):
    from typer.testing import CliRunner

    from texlens.cli import app
    from texlens.models import build_model, load_model, model_config, save_model
    from texlens.predictor import Predictor

    out, _ = transformer_run
    best = out / "checkpoints" / "best.ckpt"
    model, vocab = load_initial(best)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(1.0)
    save_model(shifted, vocab, tmp_path / "shifted")
    args = ["export", "model", str(best), str(tmp_path / "avg"), "--average-with", str(tmp_path / "shifted")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    averaged, _ = load_model(tmp_path / "avg")
    original, moved = model.state_dict(), shifted.state_dict()
    for key, value in averaged.state_dict().items():
        expected = (original[key] + moved[key]) / 2 if value.is_floating_point() else original[key]
        torch.testing.assert_close(value, expected, msg=key)
    assert not torch.equal(averaged.state_dict()["head.weight"], original["head.weight"])  # they did move
    # The preprocessing the run trained with travels from the checkpoint into config.json.
    for exported in (tmp_path / "avg", transformer_run[1]):
        saved = json.loads((exported / "config.json").read_text(encoding="utf-8"))
        assert saved["preprocess"] == {"handwriting_glyph_height": 12}, exported
    # A reading height chosen after training goes into config.json beside the trained settings; a bad one is refused.
    result = CliRunner().invoke(app, [*args[:4], "--glyph-height", "10"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "avg" / "config.json").read_text(encoding="utf-8"))
    assert saved["preprocess"] == {"target_glyph_height": 10.0, "handwriting_glyph_height": 12}
    assert Predictor(tmp_path / "avg").preprocess_config.target_glyph_height == 10.0
    # ... and replaces a height the source already reads at (here the directory just written, at 10 px)
    result = CliRunner().invoke(
        app, [*args[:2], str(tmp_path / "avg"), str(tmp_path / "at11"), "--glyph-height", "11"]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "at11" / "config.json").read_text(encoding="utf-8"))
    assert saved["preprocess"] == {"target_glyph_height": 11.0, "handwriting_glyph_height": 12}
    result = CliRunner().invoke(app, [*args[:3], str(tmp_path / "bad"), "--glyph-height", "0"])
    assert result.exit_code != 0 and "target_glyph_height must be a positive" in result.output
    assert not (tmp_path / "bad").exists()
    # Another architecture (or vocabulary) is refused with a reason, and nothing is written.
    config = model_config(model)
    name = config.pop("name")
    config["d_model"] *= 2
    save_model(build_model(name, **config), vocab, tmp_path / "wider")
    args[3], args[-1] = str(tmp_path / "refused"), str(tmp_path / "wider")
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "different architectures" in result.output and "d_model" in result.output
    assert not (tmp_path / "refused").exists()


def test_weight_average_is_exported_and_resumed(shared_data, tmp_path):
    from texlens.models import load_model
    from texlens.training import EMA_PREFIX

    out = tmp_path / "run"
    extra = ["ema_decay=0.8", "max_steps=10", "val_every_n_steps=5", "keep_every_n_steps=4"]
    cfg = load_config(TINY, tiny_overrides(shared_data, out, *extra))
    torch.set_num_threads(1)
    model_dir = train(cfg)
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    state = best["state_dict"]
    averaged = {k[len(EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    raw = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)  # the average is not the last weights
    # Export and init_from take the average, not the raw weights.
    exported, _ = load_model(model_dir)
    started, _ = load_initial(out / "checkpoints" / "best.ckpt")
    for key, value in exported.state_dict().items():
        assert torch.equal(value, averaged[key]), key
        assert torch.equal(started.state_dict()[key], averaged[key]), key
    # A resumed run continues the same average (its count of averaged steps goes on from the checkpoint).
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(last["state_dict"]["ema.n_averaged"]) == 10
    train(dataclasses.replace(cfg, max_steps=14), resume=True)
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(last["state_dict"]["ema.n_averaged"]) == 14
    with pytest.raises(ValueError, match="ema_decay"):
        load_config(TINY, ["ema_decay=1.0"])
    # keep_every_n_steps kept the weights (the average too, no optimizer state) of steps 4, 8, 12 beside last.ckpt.
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*.ckpt"))
    assert kept == ["step-000004.ckpt", "step-000008.ckpt", "step-000012.ckpt"]
    step8 = torch.load(out / "checkpoints" / kept[1], map_location="cpu", weights_only=False)
    assert "optimizer_states" not in step8 and any(k.startswith(EMA_PREFIX) for k in step8["state_dict"])
    load_initial(out / "checkpoints" / kept[1])  # export and init_from read it


def test_a_resumed_run_keeps_the_architecture_it_started_from(shared_data, tmp_path):
    """A run started from weights of another shape than its preset (a trous, deeper) resumes as that network.

    Before, --resume rebuilt the preset's model and Lightning loaded the a trous weights into the strided one
    (the same shapes), so stage 14 trained a different network after its restart without a word.
    """
    from texlens.models import load_model, model_config, rebuild, save_model

    torch.set_num_threads(1)
    first = train(load_config(TINY, tiny_overrides(shared_data, tmp_path / "first", "max_steps=2")))
    model, vocab = load_model(first)
    start = tmp_path / "start"
    save_model(rebuild(model, encoder={"atrous": [False, "height", True, False]}), vocab, start)
    # the run itself grows the model by one encoder block of its second stage
    extra = [
        "max_steps=3",
        "val_every_n_steps=3",
        f"init_from={start}",
        "model_options.encoder.blocks=[1,2,1,1]",
    ]
    cfg = load_config(TINY, tiny_overrides(shared_data, tmp_path / "run", *extra))
    train(cfg)
    wanted = model_config(load_initial(tmp_path / "run" / "checkpoints" / "last.ckpt")[0])
    assert wanted["encoder"]["atrous"] == [False, "height", True, False]
    assert wanted["encoder"]["blocks"] == [1, 2, 1, 1]
    resumed = train(dataclasses.replace(cfg, max_steps=5), resume=True)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5
    assert last["texlens"]["model_config"] == wanted
    assert model_config(load_model(resumed)[0]) == wanted


def test_periodic_checkpoints_are_written_once_per_optimizer_step(tmp_path):
    from types import SimpleNamespace

    from texlens.training import LastCheckpoint

    saved = []
    trainer = SimpleNamespace(
        global_step=0,
        strategy=SimpleNamespace(broadcast=lambda value: value),
        save_checkpoint=lambda path, weights_only: saved.append(Path(path).name),
    )
    callback = LastCheckpoint(tmp_path / "last.ckpt", every_n_steps=2, every_minutes=60, keep_every_n_steps=3)
    for step in (0, 1, 1, 2, 2, 3, 3, 4, 4):  # gradient accumulation: each step is seen twice
        trainer.global_step = step
        callback.on_train_batch_end(trainer)
    assert saved == ["last.ckpt", "step-000003.ckpt", "last.ckpt"]


def test_steps_with_nonfinite_gradients_are_skipped_and_a_diverged_run_stops(
    shared_data, tmp_path, monkeypatch
):
    poisoned = {3, 4}
    original = LitImageToLatex.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)  # a NaN loss gives NaN gradients
        return loss * float("nan") if self.global_step in poisoned else loss

    weights: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        weights[self.global_step] = [p.detach().clone() for p in self.model.parameters()]

    monkeypatch.setattr(LitImageToLatex, "training_step", training_step)
    monkeypatch.setattr(LitImageToLatex, "on_train_batch_end", on_train_batch_end)
    out = tmp_path / "run"
    train(load_config(TINY, tiny_overrides(shared_data, out, "max_steps=8", "val_every_n_steps=1000")))
    same = [
        all(torch.equal(a, b) for a, b in zip(weights[s], weights[s + 1], strict=True)) for s in range(1, 7)
    ]
    assert same == [False, False, True, True, False, False]  # steps 3 and 4 left the weights alone
    assert all(torch.isfinite(p).all() for p in weights[8])
    assert [v for _, v in logged(out, "train/skipped_steps")][-1] == 2.0

    poisoned.update(range(100))
    with pytest.raises(RuntimeError, match="NaN or inf for 3 optimizer steps in a row.*diverged"):
        train(
            load_config(
                TINY,
                tiny_overrides(shared_data, tmp_path / "run2", "max_steps=8", "max_nonfinite_steps=3"),
            )
        )


def test_cnn_rnn_trains_with_scheduled_sampling(shared_data, tmp_path):
    out = tmp_path / "run"
    extra = [
        "model=cnn-rnn",
        "teacher_forcing=scheduled",
        "teacher_forcing_floor=0.5",
        "max_steps=40",
        "log_every_n_steps=2",
        "val_every_n_steps=40",
        "lr=5e-3",
    ]
    train(load_config(TINY, tiny_overrides(shared_data, out, *extra)))
    losses = [v for _, v in logged(out, "train/loss")]
    assert mean(losses[-5:]) < mean(losses[:3]) - 0.4
    tf = [v for _, v in logged(out, "train/teacher_forcing")]
    assert tf[0] > tf[-1] >= 0.5 and tf == sorted(tf, reverse=True)
    with pytest.raises(ValueError, match="recurrent"):
        train(load_config(TINY, tiny_overrides(shared_data, tmp_path / "x", "teacher_forcing=free")))


def _ckpt_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # not written yet
        return -1


def _assert_same(a, b, where="optimizer"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_kill_minus_9_then_resume_continues_exactly(shared_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    overrides = tiny_overrides(
        shared_data, out, "max_steps=500", "checkpoint_every_n_steps=4", "val_every_n_steps=1000"
    )
    code = (
        "import sys, torch; torch.set_num_threads(1); from texlens.training import load_config, train; "
        "train(load_config(sys.argv[1], sys.argv[2:]))"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(TINY), *overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while _ckpt_step(last) < 8:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step >= 8 in time"
            time.sleep(0.5)
    finally:
        proc.kill()  # SIGKILL: no cleanup, no final checkpoint
        proc.wait()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    step = saved["global_step"]
    assert step >= 8 and step % 4 == 0

    seen = {}

    def capture(self):
        seen["step"] = self.trainer.global_step
        seen["optimizer"] = copy.deepcopy(self.trainer.optimizers[0].state_dict())
        seen["weights"] = {k: v.clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(LitImageToLatex, "on_train_start", capture, raising=False)
    # Logging every step, so the resumed run's log has rows after ``step`` whichever step the kill left.
    resumed = [f"max_steps={step + 3}", "val_every_n_steps=1000", "log_every_n_steps=1"]
    train(load_config(TINY, tiny_overrides(shared_data, out, *resumed)), resume=True)
    assert seen["step"] == step
    _assert_same(saved["optimizer_states"][0], seen["optimizer"])
    _assert_same(saved["state_dict"], seen["weights"], "weights")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == step + 3
    resumed_steps = [s for s, _ in logged(out, "lr-AdamW/pg1")]
    assert max(resumed_steps) > step


def test_mlm_pretraining_then_fine_tuning(shared_data, tmp_path, monkeypatch):
    from texlens.models import load_model

    mlm_out = tmp_path / "mlm"
    mlm_dir = train(
        load_config(
            REPO / "configs" / "mlm.yaml",
            tiny_overrides(
                shared_data,
                mlm_out,
                "preset=tiny",
                "max_steps=40",
                "val_every_n_steps=20",
                "batch_size=32",
                "lr=3e-3",
                "warmup_steps=5",
                "precision=32",
                "progress_bar=false",
                "log_every_n_steps=5",
            ),
        )
    )
    losses = [v for _, v in logged(mlm_out, "train/loss")]
    assert mean(losses[-2:]) < mean(losses[:2]) - 0.5
    assert logged(mlm_out, "val/loss") and logged(mlm_out, "val/accuracy")
    pretrained, mlm_vocab = load_model(mlm_dir)

    seen = {}

    def capture(self):
        seen["weights"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    monkeypatch.setattr(LitImageToLatex, "on_train_start", capture, raising=False)
    ft_out = tmp_path / "ft"
    ft_dir = train(
        load_config(
            TINY,
            tiny_overrides(
                shared_data, ft_out, f"init_from={mlm_dir}", "max_steps=10", "val_every_n_steps=10"
            ),
        )
    )
    # fine-tuning started from the pre-trained weights, with the pre-training vocabulary
    for key, value in pretrained.state_dict().items():
        assert torch.equal(seen["weights"][key], value), key
    fine_tuned, ft_vocab = load_model(ft_dir)
    assert ft_vocab.itos == mlm_vocab.itos
    assert not torch.equal(fine_tuned.state_dict()["head.weight"], pretrained.state_dict()["head.weight"])


def test_corrupt_follows_bert_proportions():
    from texlens.latex import SPECIAL_TOKENS, Vocab
    from texlens.mlm import corrupt

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(len(SPECIAL_TOKENS), 100, (400, 50), generator=g)
    tokens[:, 0] = Vocab.start_id
    tokens[:, 40:] = Vocab.pad_id
    out, chosen = corrupt(tokens, 100, generator=g)
    eligible = 400 * 39
    assert not chosen[:, 0].any() and not chosen[:, 40:].any()
    assert torch.equal(out[:, 40:], tokens[:, 40:]) and (out[:, 0] == Vocab.start_id).all()
    assert chosen.sum() / eligible == pytest.approx(0.15, abs=0.01)
    masked = (out == Vocab.mask_id) & chosen
    changed = (out != tokens) & chosen & ~masked
    kept = (out == tokens) & chosen
    n = chosen.sum().item()
    assert masked.sum() / n == pytest.approx(0.8, abs=0.03)
    # random replacements can hit the original token (1 in 95), so "kept" is a hair above 10 %
    assert changed.sum() / n == pytest.approx(0.1, abs=0.02)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.02)
    assert (out[changed] >= len(SPECIAL_TOKENS)).all()
    assert torch.equal(out[~chosen], tokens[~chosen])


def test_mlm_validation_leaves_out_sets_that_may_not_choose():
    from types import SimpleNamespace

    from texlens.latex import Vocab
    from texlens.mlm import TextDataModule

    cfg = load_config(None, ["mode=mlm", "train=[a]", "val=[b, {path: c, select: false}]"])
    formulas = [["x + 1", "y ^ { 2 }"], ["a = b"], ["\\frac { 1 } { 2 }", "z", "w"]]
    train_set, *val_sets = [[SimpleNamespace(latex=f) for f in group] for group in formulas]
    vocab = Vocab.build(f for group in formulas for f in group)
    data = TextDataModule(cfg, vocab, [train_set], val_sets)
    assert len(data.train_set) == 2 and len(data.val_set) == 1  # only b's formula, not c's three


def test_handwritten_sets_can_have_handwriting_perturbations():
    from texlens.data.augment import HANDWRITING, AugmentConfig
    from texlens.training import _augmenters

    cfg = load_config(
        None,
        ["augment=1.0", "train=[a, {path: b, augment_kind: handwriting}, {path: c, augment_kind: print}]"],
    )
    a, b, c = _augmenters(cfg)
    assert a is c and a.config == AugmentConfig() and a.seed == cfg.seed
    assert b is not a and b.config == HANDWRITING and b.strength == 1.0 and b.seed != a.seed
    # A misspelt kind fails when the config loads, not when the data loaders are built.
    with pytest.raises(ValueError, match="augment_kind must be one of"):
        load_config(None, ["train=[{path: a, augment_kind: cursive}]"])
    with pytest.raises(ValueError, match="augment must be >= 0"):
        load_config(None, ["augment=-1"])
