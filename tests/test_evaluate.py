"""evaluate() on a freshly trained tiny model and real CROHME test images."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from texlens import DEFAULT_BEAM
from texlens.evaluate import evaluate, print_report
from texlens.training import load_config, train

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {
    "edit_similarity",
    "exact_match",
    "bleu4",
    "exprate",
    "exprate_1",
    "exprate_2",
    "images_per_second",
}


@pytest.fixture(scope="module")
def tiny_model(shared_data, tmp_path_factory) -> Path:
    crohme = shared_data / "crohme"
    out = tmp_path_factory.mktemp("eval") / "run"
    torch.set_num_threads(1)
    overrides = [
        f"train=[{{path: '{crohme / 'train_caption.txt'}', limit: 200}}]",
        f"val=[{{path: '{crohme / 'test_2014_caption.txt'}', limit: 16}}]",
        "max_steps=20",
        "val_every_n_steps=20",
        f"output_dir={out}",
    ]
    return train(load_config(REPO / "configs" / "tiny.yaml", overrides))


def test_evaluate_returns_every_metric_and_a_sorted_error_csv(tiny_model, shared_data, tmp_path, capsys):
    from texlens.predictor import Predictor

    errors = tmp_path / "errors.csv"
    data = shared_data / "crohme" / "test_2014_caption.txt"
    predictor = Predictor(tiny_model, max_len=48)  # an untrained model rambles: keep decoding short
    metrics = evaluate(predictor, data, limit=12, batch_size=6, errors_csv=errors)
    assert METRIC_KEYS <= set(metrics)
    assert metrics["count"] == 12 and metrics["beam"] == DEFAULT_BEAM
    assert metrics["called_handwritten"] is None  # no router
    assert 0.0 <= metrics["edit_similarity"] <= 1.0 and metrics["images_per_second"] > 0
    with open(errors, newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"image", "reference", "prediction", "edit_similarity", "error"}
    sims = [float(r["edit_similarity"]) for r in rows]
    assert sims == sorted(sims)  # worst first
    # the CSV lists exactly the samples that are not exact matches
    assert len(rows) == round(12 * (1 - metrics["exact_match"]))
    assert all(Path(r["image"]).is_file() for r in rows)
    print_report(metrics)
    assert "edit similarity" in capsys.readouterr().out


def test_evaluate_with_beam_and_image_match(tiny_model, shared_data, tex_available):
    from texlens.predictor import Predictor

    predictor = Predictor(tiny_model, max_len=24)
    data = shared_data / "crohme" / "test_2014_caption.txt"
    metrics = evaluate(predictor, data, limit=4, beam=2, image_match=True)
    assert metrics["beam"] == 2 and "image_match" in metrics
    assert 0.0 <= metrics["image_match"] <= 1.0
