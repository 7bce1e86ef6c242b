"""The seed's data preparation (report §4.1) as one pipeline of small steps.

labels + images -> drop bad labels (:mod:`texlens.data.clean`) -> pair labels with images by file name ->
shuffle and split with a seed -> grey PNGs (cropped to the ink, optionally downscaled) named ``0000123.png``
and the lists ``im2latex_formulas.norm.lst`` + ``im2latex_{train,validate,test}_filter.lst`` -> vocabulary
JSON from the training labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from texlens.data.clean import TexCheck, ascii_vocabulary, filter_labels
from texlens.data.formats import (
    IMAGE_SUFFIXES,
    LABELS_FILE,
    DataIssue,
    Sample,
    format_issues,
    read_dataset,
    text_lines,
    write_im2latex,
)
from texlens.image import analyse_ink, load_image
from texlens.latex import Vocab, normalize

__all__ = [
    "Pairing",
    "PrepareReport",
    "normalize_image",
    "pair_by_name",
    "prepare_dataset",
    "read_label_table",
    "split_samples",
]

SPLIT_NAMES = ("train", "validate", "test")
VOCAB_FILE = "vocab.json"

T = TypeVar("T")


# ------------------------------------------------------------------------------------ labels and pairing


def read_label_table(path: str | Path) -> tuple[dict[str, str], list[DataIssue]]:
    """Raw labels from ``NAME<TAB>LATEX`` lines (the seed's Mathpix output, our labels.tsv), unnormalised."""
    path = Path(path)
    issues: list[DataIssue] = []
    labels: dict[str, str] = {}
    for number, line in text_lines(path, issues):
        name, tab, raw = line.partition("\t")
        if not tab:
            issues.append(DataIssue(path, number, "malformed line", f"no tab in {line[:80]!r}"))
        elif name in labels:
            issues.append(DataIssue(path, number, "duplicate name", name))
        else:
            labels[name] = raw
    return labels, issues


@dataclass
class Pairing:
    """Labels matched with image files, and what was left on either side."""

    pairs: list[tuple[Path, str]] = field(default_factory=list)  # (image, raw label), sorted by label key
    labels_without_image: list[str] = field(default_factory=list)
    images_without_label: list[Path] = field(default_factory=list)


def pair_by_name(labels: dict[str, str], image_dir: str | Path) -> Pairing:
    """Match label keys with images in ``image_dir``: by relative path, else file name, else unique stem."""
    image_dir = Path(image_dir)
    files = sorted(
        p for p in (image_dir.iterdir() if image_dir.is_dir() else []) if p.suffix.lower() in IMAGE_SUFFIXES
    )
    by_name = {p.name: p for p in files}
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    pairing = Pairing()
    used: set[Path] = set()
    for key in sorted(labels):
        exact = image_dir / key
        name = Path(key).name
        if exact.is_file():
            image = exact
        elif name in by_name:
            image = by_name[name]
        elif len(by_stem.get(Path(name).stem, [])) == 1:
            image = by_stem[Path(name).stem][0]  # label says a.jpg, the file is a.png
        else:
            pairing.labels_without_image.append(key)
            continue
        used.add(image)
        pairing.pairs.append((image, labels[key]))
    pairing.images_without_label = [p for p in files if p not in used]
    return pairing


# ------------------------------------------------------------------------------------ split and images


def split_samples(
    items: Sequence[T], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[list[T]]:
    """Shuffle with ``seed`` and cut into consecutive parts of the given fractions (summing to 1)."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    order = list(items)
    random.Random(seed).shuffle(order)
    bounds = [0]
    total = 0.0
    for f in fractions:
        total += f
        bounds.append(round(total * len(order)))
    bounds[-1] = len(order)
    return [order[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def normalize_image(
    src: Path,
    dst: Path,
    *,
    crop_margin: int | None = 8,
    max_height: int | None = None,
    max_width: int | None = None,
) -> None:
    """Write ``src`` as a grey PNG, cropped and downscaled.

    Cropped to its ink plus ``crop_margin`` pixels, dark ink on light (None: no crop, polarity kept), then
    downscaled (aspect kept) to fit ``max_height`` x ``max_width``.
    """
    grey = load_image(src)
    if crop_margin is not None:
        # Full-page renders (im2markup) become formula-sized; light-on-dark (CROHME) becomes dark-on-light.
        ink = analyse_ink(np.asarray(grey))
        x0, y0 = ink.stats[:, 0].min(), ink.stats[:, 1].min()
        x1, y1 = (ink.stats[:, 0] + ink.stats[:, 2]).max(), (ink.stats[:, 1] + ink.stats[:, 3]).max()
        height, width = ink.grey.shape
        x0, y0 = max(int(x0) - crop_margin, 0), max(int(y0) - crop_margin, 0)
        x1, y1 = min(int(x1) + crop_margin, width), min(int(y1) + crop_margin, height)
        grey = Image.fromarray(ink.grey[y0:y1, x0:x1])
    width, height = grey.size
    scale = min(
        max_height / height if max_height else 1.0,
        max_width / width if max_width else 1.0,
        1.0,
    )
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = grey.resize(size, Image.Resampling.LANCZOS)
    grey.save(dst, format="PNG")


# ------------------------------------------------------------------------------------ the pipeline


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` read, dropped and wrote."""

    out_dir: Path
    labels_read: int = 0
    issues: list[DataIssue] = field(default_factory=list)
    unpaired_labels: list[str] = field(default_factory=list)
    unpaired_images: list[Path] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    image_failures: list[tuple[Path, str]] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    vocab_size: int = 0
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for people: counts at each step, then where the files are."""
        rows = [f"{self.labels_read} labels read from the source"]
        if self.issues:
            rows.append(f"{len(self.issues)} unreadable lines:\n{format_issues(self.issues)}")
        if self.unpaired_labels:
            rows.append(
                f"{len(self.unpaired_labels)} labels without an image, e.g. {self.unpaired_labels[:3]}"
            )
        if self.unpaired_images:
            rows.append(
                f"{len(self.unpaired_images)} images without a label, e.g. {self.unpaired_images[:3]}"
            )
        rows.extend(f"{n} dropped: {reason}" for reason, n in sorted(self.dropped.items()))
        if self.image_failures:
            path, why = self.image_failures[0]
            rows.append(f"{len(self.image_failures)} dropped: image unreadable, e.g. {path}: {why}")
        rows.append(
            ", ".join(f"{name} {n}" for name, n in self.splits.items())
            + f"; vocabulary {self.vocab_size} tokens"
        )
        rows.extend(f"  {name}: {path}" for name, path in self.files.items())
        return "\n".join(rows)


def _load_pairs(source: Path, image_dir: Path | None, report: PrepareReport) -> list[tuple[Path, str]]:
    """(image, raw label) pairs from a label table (paired by name) or any dataset read_dataset reads."""
    table = source / LABELS_FILE if source.is_dir() and (source / LABELS_FILE).is_file() else source
    if table.is_file() and table.suffix == ".tsv":
        labels, report.issues = read_label_table(table)
        report.labels_read = len(labels) + len(report.issues)
        pairing = pair_by_name(labels, image_dir or table.parent)
        report.unpaired_labels = pairing.labels_without_image
        report.unpaired_images = pairing.images_without_label
        return pairing.pairs
    samples, report.issues = read_dataset(source)
    report.labels_read = len(samples) + len(report.issues)
    return [(s.image, s.latex) for s in samples]


def prepare_dataset(
    source: str | Path,
    out_dir: str | Path,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    vocab_min_freq: int = 1,
    *,
    image_dir: str | Path | None = None,
    filter_vocab: Vocab | Sequence[str] | None = None,
    tex_check: TexCheck | None = None,
    crop_margin: int | None = 8,
    max_height: int | None = None,
    max_width: int | None = None,
    progress: bool = False,
) -> PrepareReport:
    """Run the seed's preparation from ``source`` into ``out_dir`` (IM2LATEX lists, images/, vocab.json).

    ``source``: a label table (``NAME<TAB>LATEX``, or a folder with ``labels.tsv``) whose names are paired
    with images in ``image_dir`` (default: the table's folder), or any dataset :func:`read_dataset` reads.
    ``filter_vocab``: labels must tokenise against it by longest match; default: the ASCII tokens of all
    labels, which drops labels with CJK (or other non-ASCII) text as the seed did. Images: see
    :func:`normalize_image`.
    """
    if len(split) != len(SPLIT_NAMES):
        raise ValueError(
            f"split needs {len(SPLIT_NAMES)} fractions ({', '.join(SPLIT_NAMES)}), got {tuple(split)}"
        )
    source, out_dir = Path(source), Path(out_dir)
    report = PrepareReport(out_dir=out_dir)
    pairs = _load_pairs(source, Path(image_dir) if image_dir else None, report)
    raws = [raw for _, raw in pairs]
    vocab_tokens = filter_vocab if filter_vocab is not None else ascii_vocabulary(raws)
    kept, dropped = filter_labels(raws, vocab_tokens, tex_check=tex_check)
    report.dropped = {reason: len(indices) for reason, indices in dropped.items()}
    name = source.stem if source.is_file() else source.name
    samples = [Sample(pairs[i][0], normalize(pairs[i][1]), name) for i in kept]

    parts = dict(zip(SPLIT_NAMES, split_samples(samples, split, seed), strict=True))
    write = partial(normalize_image, crop_margin=crop_margin, max_height=max_height, max_width=max_width)
    with _progress(progress, len(samples), "writing images") as advance:
        files, failures = write_im2latex(parts, out_dir, write_image=_counting(write, advance))
    failed = {id(s) for s, _ in failures}
    report.image_failures = [(s.image, why) for s, why in failures]
    train = [s for s in parts["train"] if id(s) not in failed]
    report.splits = {n: sum(id(s) not in failed for s in part) for n, part in parts.items()}

    vocab = Vocab.build([s.latex for s in train], min_freq=vocab_min_freq)
    files["vocab"] = out_dir / VOCAB_FILE
    vocab.save(files["vocab"])
    report.vocab_size = len(vocab)
    report.files = files
    return report


def _counting(
    write: Callable[[Path, Path], None], advance: Callable[[], None]
) -> Callable[[Path, Path], None]:
    def counted(src: Path, dst: Path) -> None:
        try:
            write(src, dst)
        finally:
            advance()

    return counted


class _progress:
    """A rich progress bar when enabled, else a no-op; yields a callable that advances it by one."""

    def __init__(self, enabled: bool, total: int, what: str):
        self.enabled, self.total, self.what = enabled, total, what
        self._bar = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task(self.what, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
