"""The seed's preparation pipeline: pairing, split, image normalisation, list files and vocabulary."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from texlens.data.formats import read_dataset, read_im2latex, write_folder
from texlens.data.prepare import (
    normalize_image,
    pair_by_name,
    prepare_dataset,
    read_label_table,
    split_samples,
)
from texlens.latex import Vocab

N_REAL = 30  # real IM2LATEX validation images used by the pipeline test


def test_split_is_deterministic_disjoint_and_complete() -> None:
    items = list(range(1000))
    train, val, test = split_samples(items, (0.8, 0.1, 0.1), seed=3)
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert sorted(train + val + test) == items
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert split_samples(items, (0.8, 0.1, 0.1), seed=3) == [train, val, test]
    assert split_samples(items, (0.8, 0.1, 0.1), seed=4)[0] != train
    sizes = [len(p) for p in split_samples(list(range(7)), (0.5, 0.25, 0.25))]
    assert sum(sizes) == 7 and all(abs(n - f * 7) < 1 for n, f in zip(sizes, (0.5, 0.25, 0.25), strict=True))
    assert split_samples([], (0.8, 0.1, 0.1)) == [[], [], []]
    with pytest.raises(ValueError, match="sum to 1"):
        split_samples(items, (0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        split_samples(items, (1.2, -0.2, 0.0))


def test_pair_by_name(tmp_path: Path) -> None:
    for name in ("a.png", "b.jpg", "c.png", "orphan.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"")
    labels = {"a.png": "x", "b.png": "y", "c": "z", "sub/d.png": "w", "e.png": "v"}
    pairing = pair_by_name(labels, tmp_path)
    assert pairing.pairs == [
        (tmp_path / "a.png", "x"),
        (tmp_path / "b.jpg", "y"),  # the label names b.png, the file is b.jpg: matched by stem
        (tmp_path / "c.png", "z"),
        (tmp_path / "sub" / "d.png", "w"),  # a relative path
    ]
    assert pairing.labels_without_image == ["e.png"]
    assert pairing.images_without_label == [tmp_path / "orphan.png"]


def test_read_label_table_reports_bad_lines(tmp_path: Path) -> None:
    table = tmp_path / "labels.tsv"
    table.write_bytes(b"a.png\tx^2\nno tab\nb.png\t\\frac12\na.png\ty\nc.png\t\xff\n")
    labels, issues = read_label_table(table)
    assert labels == {"a.png": "x^2", "b.png": r"\frac12"}
    assert [(i.line, i.reason) for i in issues] == [
        (5, "not UTF-8"),
        (2, "malformed line"),
        (4, "duplicate name"),
    ]


def test_normalize_image_makes_grey_cropped_downscaled_png(tmp_path: Path) -> None:
    rgba = np.zeros((100, 300, 4), np.uint8)  # transparent background, opaque black ink
    rgba[40:60, 50:250] = (0, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    normalize_image(tmp_path / "ink.png", tmp_path / "out.png", crop_margin=5)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "L" and out.size == (210, 30)
        assert out.getpixel((0, 0)) == 255 and out.getpixel((105, 15)) == 0
    normalize_image(
        tmp_path / "ink.png", tmp_path / "small.png", crop_margin=None, max_height=50, max_width=120
    )
    with Image.open(tmp_path / "small.png") as out:
        assert out.mode == "L" and out.size == (120, 40)
    inverted = np.full((60, 200), 0, np.uint8)  # CROHME-style white strokes on black
    inverted[20:40, 30:170] = 255
    Image.fromarray(inverted).save(tmp_path / "white_on_black.png")
    normalize_image(tmp_path / "white_on_black.png", tmp_path / "fixed.png", crop_margin=2)
    with Image.open(tmp_path / "fixed.png") as out:
        assert out.getpixel((0, 0)) > 200 and out.getpixel((out.width // 2, out.height // 2)) < 50


@pytest.fixture(scope="module")
def seed_style_source(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Mathpix-style label table beside an image folder, with the messes the seed met."""
    root = tmp_path_factory.mktemp("seed_source")
    images = root / "images"
    images.mkdir()
    im = shared_data / "im2latex100k"
    formulas = (im / "val.formulas.norm.txt").read_text(encoding="utf-8").split("\n")
    rows = []
    for k in range(N_REAL):
        shutil.copyfile(im / "images_val" / f"{k}.png", images / f"shot_{k:03d}.png")
        rows.append(f"shot_{k:03d}.png\t{formulas[k].strip()}")
    for name, label in [
        ("mathpix_failed.png", "error mathpix"),
        ("chinese.png", r"x=1 \text{ 米 }"),
        ("prose.png", "已知函数的定义域为实数集"),
        ("blank.png", ""),
    ]:
        shutil.copyfile(im / "images_val" / "0.png", images / name)
        rows.append(f"{name}\t{label}")
    (images / "broken.png").write_bytes(b"not a png")
    rows.append(f"broken.png\t{formulas[1].strip()}")
    rows.append("never_taken.png\tx")
    shutil.copyfile(im / "images_val" / "1.png", images / "unlabelled.png")
    (root / "mathpix.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_prepare_dataset_from_a_label_table(seed_style_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    report = prepare_dataset(
        seed_style_source / "mathpix.tsv",
        out,
        split=(0.8, 0.1, 0.1),
        seed=0,
        image_dir=seed_style_source / "images",
    )
    assert report.labels_read == N_REAL + 6
    assert report.unpaired_labels == ["never_taken.png"]
    assert report.unpaired_images == [seed_style_source / "images" / "unlabelled.png"]
    assert report.dropped == {"mathpix error": 1, "out of vocabulary": 1, "prose, not LaTeX": 1, "empty": 1}
    assert [path.name for path, _ in report.image_failures] == ["broken.png"]
    assert sum(report.splits.values()) == N_REAL
    summary = report.summary()
    assert "1 dropped: mathpix error" in summary and "image unreadable" in summary

    # The written lists read back: every image exists, grey, named by its formula line.
    seen_lines: set[int] = set()
    for split in ("train", "validate", "test"):
        samples, issues = read_im2latex(
            out / "im2latex_formulas.norm.lst", out / f"im2latex_{split}_filter.lst", out / "images"
        )
        assert issues == [] and len(samples) == report.splits[split]
        for s in samples:
            number = int(s.image.stem)
            assert len(s.image.stem) == 7 and number not in seen_lines
            seen_lines.add(number)
            with Image.open(s.image) as img:
                assert img.mode == "L"
    assert sorted(seen_lines) == list(range(N_REAL))
    vocab = Vocab.load(out / "vocab.json")
    assert len(vocab) == report.vocab_size
    train, _ = read_im2latex(out / "im2latex_formulas.norm.lst", out / "im2latex_train_filter.lst")
    assert all(t in vocab for s in train for t in s.latex.split())
    assert read_dataset(out)[1] == []  # the output folder is itself a readable IM2LATEX dataset

    again = tmp_path / "again"
    prepare_dataset(seed_style_source / "mathpix.tsv", again, seed=0, image_dir=seed_style_source / "images")
    for name in ("im2latex_formulas.norm.lst", "im2latex_train_filter.lst", "vocab.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    other = tmp_path / "other_seed"
    prepare_dataset(seed_style_source / "mathpix.tsv", other, seed=1, image_dir=seed_style_source / "images")
    assert (other / "im2latex_formulas.norm.lst").read_bytes() != (
        out / "im2latex_formulas.norm.lst"
    ).read_bytes()


def test_prepare_dataset_from_a_readable_dataset(shared_data: Path, tmp_path: Path) -> None:
    # A folder-format dataset (labels.tsv beside its images) also goes through prepare.
    im = shared_data / "im2latex100k"
    head = tmp_path / "head.txt"
    head.write_bytes(b"".join((im / "val.matching.txt").read_bytes().splitlines(keepends=True)[:200]))
    samples, _ = read_im2latex(im / "val.formulas.norm.txt", head, im / "images_val")
    # images_val/196.png is blank white (so are 426.png and 823.png): the image step drops it and says so.
    chosen = samples[:20] + [s for s in samples if s.image.name == "196.png"]
    write_folder(chosen, tmp_path / "folder", link_images=True)
    report = prepare_dataset(tmp_path / "folder", tmp_path / "out", split=(0.5, 0.5, 0.0), max_height=24)
    assert [(p.name, "blank image" in why) for p, why in report.image_failures] == [("196.png", True)]
    assert sum(report.splits.values()) == 20 and report.splits["test"] == 0 and report.issues == []
    back, _ = read_im2latex(
        tmp_path / "out" / "im2latex_formulas.norm.lst", tmp_path / "out" / "im2latex_validate_filter.lst"
    )
    assert {s.latex for s in back} <= {s.latex for s in samples[:20]}
    for s in back:
        with Image.open(tmp_path / "out" / "images" / s.image.name) as img:
            assert img.height <= 24
