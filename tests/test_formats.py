"""Dataset readers and writers on the real published files, and on deliberately broken ones."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from texlens.data.formats import (
    LAYOUT_IMAGE_FIRST,
    LAYOUT_INDEX_FIRST,
    DataIssue,
    Sample,
    detect_list_layout,
    format_issues,
    read_crohme,
    read_dataset,
    read_folder,
    read_im2latex,
    text_lines,
    write_folder,
    write_im2latex,
)
from texlens.latex import normalize


def _where(issues: list[DataIssue]) -> list[tuple[str, int, str]]:
    return [(i.file.name, i.line, i.reason) for i in issues]


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def cn_train(shared_data: Path) -> tuple[list[Sample], list[DataIssue]]:
    cn = shared_data / "cn_math"
    return read_im2latex(cn / "im2latex_formulas.norm.lst", cn / "im2latex_train_filter.lst")


@pytest.fixture(scope="module")
def im2latex_val(shared_data: Path) -> tuple[list[Sample], list[DataIssue]]:
    return read_dataset(shared_data / "im2latex100k")  # the folder: formula file, list and images guessed


def test_cn_math_train_list_reports_its_two_broken_formulas(shared_data: Path, cn_train) -> None:
    cn = shared_data / "cn_math"
    samples, issues = cn_train
    # 76,947 list lines; formula lines 63233 ("... \right) }, ..." closes a brace never opened) and 68593
    # ("P A \perp \stackrel{\mp}", \stackrel without its second argument) cannot be parsed.
    assert len(samples) == 76_947 - 2
    assert _where(issues) == [
        ("im2latex_formulas.norm.lst", 63_233, "invalid LaTeX"),
        ("im2latex_formulas.norm.lst", 68_593, "invalid LaTeX"),
    ]
    assert "im2latex_train_filter.lst:63233" in issues[0].detail
    assert samples[0] == Sample(
        cn / "images" / "3078_7.png", r"\sqrt { 3 } < k < 2", "cn_math/im2latex_train_filter"
    )
    assert all(s.latex == normalize(s.latex) for s in samples[:2000])


def test_cn_math_validate_list_is_clean(shared_data: Path) -> None:
    cn = shared_data / "cn_math"
    val, issues = read_dataset(cn / "im2latex_validate_filter.lst")  # a list file: formulas found beside it
    assert len(val) == 11_004 and issues == []
    assert val[0].source == "cn_math/im2latex_validate_filter"
    lines = [line for _, line in text_lines(cn / "im2latex_validate_filter.lst", [])]
    assert detect_list_layout(lines) == LAYOUT_IMAGE_FIRST
    indices = {int(line.split()[1]) for line in lines}
    assert min(indices) == 76_947 and max(indices) == 87_950  # validation formulas follow the training ones


def test_im2latex100k_val_with_images(shared_data: Path, im2latex_val) -> None:
    im = shared_data / "im2latex100k"
    samples, issues = im2latex_val
    # The formula file has CRLF line ends; 11 formulas end in a backslash (a trailing "\ " cut short), which
    # normalises to a trailing control space "~": formula line 219 is one of them.
    assert issues == [] and len(samples) == 8475
    assert samples[218].latex.endswith(r"\theta ^ { 1 2 } | ~")
    assert not any("\r" in s.latex for s in samples)
    assert samples[0].image == im / "images_val" / "0.png"
    assert samples[0].source == "im2latex100k/val.matching"
    for sample in random.Random(0).sample(samples, 20):
        assert sample.image.is_file()
    with Image.open(samples[0].image) as img:
        assert min(img.size) > 8


def test_im2latex100k_missing_images_are_reported(shared_data: Path, tmp_path: Path) -> None:
    im = shared_data / "im2latex100k"
    head = tmp_path / "head.txt"  # the first 300 lines of the real list, read against an empty image folder
    head.write_bytes(b"".join((im / "val.matching.txt").read_bytes().splitlines(keepends=True)[:300]))
    (tmp_path / "images").mkdir()
    samples, issues = read_im2latex(im / "val.formulas.norm.txt", head, tmp_path / "images")
    assert samples == []
    assert len(issues) == 300 and {i.reason for i in issues} == {"missing image"}
    assert issues[0] == DataIssue(head, 1, "missing image", str(tmp_path / "images" / "0.png"))
    unchecked, _ = read_im2latex(im / "val.formulas.norm.txt", head, tmp_path / "images", check_images=False)
    assert len(unchecked) == 300


def test_crohme_train_and_test_captions(shared_data: Path) -> None:
    cr = shared_data / "crohme"
    train, train_issues = read_crohme(cr / "train_caption.txt", cr / "train_2014")
    test, test_issues = read_crohme(cr / "test_2014_caption.txt", cr / "test_2014")
    assert (len(train), len(test), train_issues, test_issues) == (8835, 986, [], [])
    first = test[0]
    assert first.image == cr / "test_2014" / "18_em_0_0.png" and first.image.is_file()
    assert first.latex == "x _ { k } x x _ { k } + y _ { k } y x _ { k }"
    assert first.source == "crohme/test_2014"
    assert not {s.latex for s in test} <= {s.latex for s in train}  # a real held-out set


def test_im2markup_sample_index_first_layout_and_its_broken_formulas(shared_data: Path) -> None:
    im = shared_data / "im2markup_sample"
    lines = [line for _, line in text_lines(im / "train.lst", [])]
    assert detect_list_layout(lines) == LAYOUT_INDEX_FIRST
    samples, issues = read_im2latex(im / "formulas.lst", im / "train.lst", im / "images")
    assert len(samples) == 1000 - 17
    assert samples[0].image == im / "images" / "60ee748793.png" and samples[0].image.is_file()
    by_line = {i.line: i.reason for i in issues}
    # formulas.lst lines 422, 762 and 892 are blank; 28, 67, ... hold only a TeX comment.
    assert [n for n, r in by_line.items() if r == "empty formula"] == [422, 762, 892]
    assert by_line[28] == by_line[948] == "commented out"
    assert Counter(by_line.values()) == {"commented out": 14, "empty formula": 3}
    assert {i.file.name for i in issues} == {"formulas.lst"}
    assert "train.lst:422" in next(i.detail for i in issues if i.line == 422)


@pytest.mark.parametrize(
    ("relative", "count", "source"),
    [
        ("crohme", 9821, "crohme/test_2014"),
        ("crohme/train_caption.txt", 8835, "crohme/train"),
        ("im2markup_sample", 1200 - 18, "im2markup_sample/test"),
        ("im2markup_sample/validate.lst", 100 - 1, "im2markup_sample/validate"),
    ],
)
def test_read_dataset_guesses_the_format(shared_data: Path, relative: str, count: int, source: str) -> None:
    samples, _ = read_dataset(shared_data / relative)
    assert len(samples) == count
    assert samples[0].source == source
    assert samples[0].image.is_file()


def test_read_dataset_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="labels.tsv"):
        read_dataset(tmp_path)


# ------------------------------------------------------------------------------------------- broken files


def _png(path: Path) -> Path:
    img = Image.new("L", (40, 20), 255)
    img.paste(0, (5, 5, 35, 15))
    img.save(path)
    return path


def test_broken_im2latex_files_report_every_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png"):
        _png(images / name)
    formulas = tmp_path / "formulas.lst"
    formulas.write_bytes(
        b"x^2\n"  # 0: fine
        b"\\frac12\r\n"  # 1: fine, CRLF
        b"\xff\xfe bad\n"  # 2: not UTF-8
        b"   \n"  # 3: empty
        b"{x\n"  # 4: unbalanced
        b"y\n"  # 5: fine, image missing
    )
    lst = tmp_path / "train.lst"
    lst.write_bytes(
        b"a.png 0\n"  # 1 ok
        b"b.png 1\n"  # 2 ok
        b"c.png 99\n"  # 3 index past end
        b"this line is garbage\n"  # 4 malformed
        b"d.png x\n"  # 5 non-integer index
        b"e.png 2\n"  # 6 -> formula line 3 not UTF-8
        b"f.png 3\n"  # 7 -> formula line 4 empty
        b"a.png 4\n"  # 8 -> formula line 5 invalid
        b"zz.png 5\n"  # 9 missing image
        b"\xe9.png 0\n"  # 10 list line not UTF-8
        b"\n"  # 11 blank
        b"b.png -1\n"  # 12 negative index
    )
    samples, issues = read_im2latex(formulas, lst, images)
    assert [(s.image.name, s.latex) for s in samples] == [
        ("a.png", "x ^ { 2 }"),
        ("b.png", r"\frac { 1 } { 2 }"),
    ]
    assert sorted(_where(issues)) == [
        ("formulas.lst", 3, "not UTF-8"),
        ("formulas.lst", 4, "empty formula"),
        ("formulas.lst", 5, "invalid LaTeX"),
        ("train.lst", 3, "index out of range"),
        ("train.lst", 4, "malformed line"),
        ("train.lst", 5, "non-integer index"),
        ("train.lst", 9, "missing image"),
        ("train.lst", 10, "not UTF-8"),
        ("train.lst", 11, "blank line"),
        ("train.lst", 12, "index out of range"),
    ]
    not_utf8 = next(i for i in issues if i.file == formulas and i.line == 3)
    assert "train.lst:6" in not_utf8.detail  # a formula issue names the list line that used it
    text = format_issues(issues)
    assert "2  index out of range" in text
    assert f"{lst}:3: index out of range" in text


def test_unknown_list_layout_is_one_issue(tmp_path: Path) -> None:
    (tmp_path / "f.lst").write_text("x\n")
    (tmp_path / "l.lst").write_text("what is this\nno idea\n")
    samples, issues = read_im2latex(tmp_path / "f.lst", tmp_path / "l.lst")
    assert samples == [] and _where(issues) == [("l.lst", 0, "unknown list layout")]


def test_crohme_reader_finds_image_variants_and_reports_missing(tmp_path: Path) -> None:
    _png(tmp_path / "k1_0.png")
    Image.open(_png(tmp_path / "tmp.png")).save(tmp_path / "k2.bmp")
    caps = tmp_path / "caption.txt"
    caps.write_text("k1\tx ^ 2\nk2\t\\alpha\nk3\ty\nk4\t\nk5 a + b\n", encoding="utf-8")
    samples, issues = read_crohme(caps, tmp_path)
    assert [(s.image.name, s.latex) for s in samples] == [("k1_0.png", "x ^ { 2 }"), ("k2.bmp", r"\alpha")]
    assert _where(issues) == [
        ("caption.txt", 3, "missing image"),
        ("caption.txt", 4, "empty formula"),
        ("caption.txt", 5, "missing image"),
    ]


def test_folder_format_round_trip_and_issues(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a, b = _png(src / "a.png"), _png(src / "b.png")
    samples = [Sample(a, "x ^ { 2 }", "src"), Sample(b, r"\frac { 1 } { 2 }", "src")]
    copied = tmp_path / "copied"
    write_folder(samples, copied)
    back, issues = read_folder(copied)
    assert issues == [] and [(s.image, s.latex) for s in back] == [
        (copied / "images" / "a.png", "x ^ { 2 }"),
        (copied / "images" / "b.png", r"\frac { 1 } { 2 }"),
    ]
    linked = tmp_path / "linked"
    write_folder(samples, linked, link_images=True)
    back, issues = read_dataset(linked)
    assert issues == [] and [s.image for s in back] == [a.resolve(), b.resolve()]
    assert back[0].source == "linked"

    labels = linked / "labels.tsv"
    labels.write_text(
        labels.read_text() + "no tab here\nmissing.png\tx\nimages/a.png\t}{\n", encoding="utf-8"
    )
    back, issues = read_folder(linked)
    assert len(back) == 2
    assert _where(issues) == [
        ("labels.tsv", 3, "malformed line"),
        ("labels.tsv", 4, "missing image"),
        ("labels.tsv", 5, "invalid LaTeX"),
    ]


def test_write_im2latex_reads_back_identically(shared_data: Path, tmp_path: Path) -> None:
    im = shared_data / "im2markup_sample"
    samples, _ = read_im2latex(im / "formulas.lst", im / "validate.lst", im / "images")
    splits = {"train": samples[:60], "validate": samples[60:80], "test": samples[80:]}
    files, failures = write_im2latex(splits, tmp_path)
    assert failures == []
    assert (tmp_path / "images" / "0000000.png").is_file()
    assert files["formulas"].name == "im2latex_formulas.norm.lst"
    offset = 0
    for name, part in splits.items():
        assert files[name].name == f"im2latex_{name}_filter.lst"
        for normalized_input in (False, True):
            back, issues = read_im2latex(
                files["formulas"], files[name], tmp_path / "images", normalized_input=normalized_input
            )
            assert issues == []
            assert [s.latex for s in back] == [s.latex for s in part]
            assert [s.image.name for s in back] == [f"{k:07d}.png" for k in range(offset, offset + len(part))]
        offset += len(part)
    assert (tmp_path / "images" / "0000000.png").read_bytes() == samples[0].image.read_bytes()


def test_normalized_input_flags_lines_that_are_not_canonical(tmp_path: Path) -> None:
    (tmp_path / "f.lst").write_text("x ^ { 2 }\nx^2\n")
    (tmp_path / "l.lst").write_text("a.png 0\nb.png 1\n")
    samples, issues = read_im2latex(tmp_path / "f.lst", tmp_path / "l.lst", normalized_input=True)
    assert [s.latex for s in samples] == ["x ^ { 2 }"]
    assert _where(issues) == [("f.lst", 2, "not canonical")]


def test_write_im2latex_leaves_out_images_it_cannot_write(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png")
    samples = [Sample(good, "x", "t"), Sample(tmp_path / "gone.png", "y", "t"), Sample(good, "z", "t")]
    files, failures = write_im2latex({"train": samples}, tmp_path / "out")
    assert [s.latex for s, _ in failures] == ["y"]
    back, issues = read_im2latex(files["formulas"], files["train"], tmp_path / "out" / "images")
    assert issues == [] and [(s.image.name, s.latex) for s in back] == [
        ("0000000.png", "x"),
        ("0000001.png", "z"),
    ]
