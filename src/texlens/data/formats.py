"""Readers and writers for the dataset layouts we meet: IM2LATEX lists, CROHME captions and our folder format.

Every reader returns ``(samples, issues)``: the good samples with their labels in canonical form
(:func:`texlens.latex.normalize`) and one :class:`DataIssue` per line that could not be used, with file and
line number. A reader never stops at a bad line and never drops one silently.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from texlens.latex import LatexError, normalize

__all__ = [
    "DataIssue",
    "Sample",
    "format_issues",
    "read_crohme",
    "read_dataset",
    "read_folder",
    "read_im2latex",
    "write_folder",
    "write_im2latex",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABELS_FILE = "labels.tsv"
FORMULA_FILE = "im2latex_formulas.norm.lst"


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, its canonical LaTeX and the dataset it came from."""

    image: Path
    latex: str
    source: str


@dataclass(frozen=True)
class DataIssue:
    """A line that could not become a sample: where it is (1-based line, 0 = whole file) and why."""

    file: Path
    line: int
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


# ------------------------------------------------------------------------------------ helpers


def _read_lines(path: Path) -> list[bytes]:
    """Lines of a file as bytes, split on ``\\n`` only (formulas may hold a stray ``\\r`` or form feed)."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def text_lines(path: Path, issues: list[DataIssue]) -> list[tuple[int, str]]:
    """(line number, text) of each UTF-8, non-blank line of a file; the other lines are appended as issues."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(_read_lines(path), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            detail = f"byte {e.start}: {raw[e.start : e.start + 1]!r}"
            issues.append(DataIssue(Path(path), number, "not UTF-8", detail))
            continue
        if line.strip():
            out.append((number, line))
        else:
            issues.append(DataIssue(Path(path), number, "blank line"))
    return out


class _ImageChecker:
    """Whether image files exist, listing each folder once (a stat per image is slow on 100k files)."""

    def __init__(self) -> None:
        self._listing: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        folder = path.parent
        if folder not in self._listing:
            try:
                self._listing[folder] = frozenset(os.listdir(folder))
            except OSError:
                self._listing[folder] = frozenset()
        return path.name in self._listing[folder]


def _canonical(raw: str, file: Path, line: int, issues: list[DataIssue], where: str = "") -> str | None:
    """Canonical LaTeX of a label, or None with an issue ("empty formula" / "invalid LaTeX")."""
    if not raw.strip():
        issues.append(DataIssue(file, line, "empty formula", where))
        return None
    if raw.lstrip().startswith("%"):  # TeX ignores the whole line: im2markup has formulas commented out
        issues.append(DataIssue(file, line, "commented out", where))
        return None
    try:
        return normalize(raw)
    except LatexError as e:
        issues.append(DataIssue(file, line, "invalid LaTeX", f"{e}{'; ' + where if where else ''}"))
        return None


def _with_suffix(name: str) -> str:
    """IM2LATEX image names sometimes lack the extension (im2markup's ``60ee748793``): they are PNGs."""
    return name if name.lower().endswith(IMAGE_SUFFIXES) else name + ".png"


# ------------------------------------------------------------------------------------ IM2LATEX

# List layouts: "IMAGE FORMULA_IDX" (im2latex-100k, cn_math), "FORMULA_IDX IMAGE RENDER_TYPE" (im2markup).
LAYOUT_IMAGE_FIRST = "image index"
LAYOUT_INDEX_FIRST = "index image type"


def detect_list_layout(lines: Iterable[str], probe: int = 200) -> str | None:
    """The layout of an IM2LATEX list file, by a vote over its first ``probe`` lines; None if neither fits."""
    votes: Counter[str] = Counter()
    ambiguous = 0  # "123 45": an image named by digits, or an index-first line without render type
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        probe -= 1
        if probe < 0:
            break
        first_int, second_int = parts[0].isdigit(), len(parts) > 1 and parts[1].isdigit()
        if len(parts) == 2 and first_int and second_int:
            ambiguous += 1
        elif len(parts) == 2 and second_int:
            votes[LAYOUT_IMAGE_FIRST] += 1
        elif len(parts) in (2, 3) and first_int:
            votes[LAYOUT_INDEX_FIRST] += 1
    if votes:
        return votes.most_common(1)[0][0]
    return LAYOUT_IMAGE_FIRST if ambiguous else None


def read_im2latex(
    formulas_file: str | Path,
    list_file: str | Path,
    images_dir: str | Path | None = None,
    *,
    normalized_input: bool = False,
    check_images: bool = True,
    source: str | None = None,
) -> tuple[list[Sample], list[DataIssue]]:
    """Samples of an IM2LATEX list file (either layout) with formulas from ``formulas_file``.

    ``images_dir`` defaults to ``images/`` beside the list file; images are checked for existence only when
    ``images_dir`` is given and ``check_images`` is true (cn_math publishes lists without images).
    ``normalized_input``: the formula file should already be canonical (as :func:`write_im2latex` writes it);
    a line that normalisation would change is an issue ("not canonical") instead of a sample.
    """
    formulas_file, list_file = Path(formulas_file), Path(list_file)
    issues: list[DataIssue] = []
    formula_bytes = _read_lines(formulas_file)
    list_lines = text_lines(list_file, issues)
    layout = detect_list_layout(line for _, line in list_lines)
    if layout is None:
        issues.append(
            DataIssue(list_file, 0, "unknown list layout", "expected 'IMAGE INDEX' or 'INDEX IMAGE TYPE'")
        )
        return [], issues
    check = check_images and images_dir is not None
    folder = Path(images_dir) if images_dir is not None else list_file.parent / "images"
    source = source or f"{list_file.parent.name}/{list_file.stem}"
    checker = _ImageChecker()
    # formula index -> canonical form (None: unusable, its issue already made)
    canonical: dict[int, str | None] = {}
    samples: list[Sample] = []
    for number, line in list_lines:
        parts = line.split()
        if layout == LAYOUT_IMAGE_FIRST:
            ok = len(parts) == 2
            name, index_text = (parts + ["", ""])[:2]
        else:
            ok = len(parts) in (2, 3)
            index_text, name = (parts + ["", ""])[:2]
        if not ok:
            issues.append(
                DataIssue(list_file, number, "malformed line", f"{line.strip()[:80]!r}, layout {layout!r}")
            )
            continue
        if not index_text.lstrip("-").isdigit():
            issues.append(DataIssue(list_file, number, "non-integer index", repr(index_text[:40])))
            continue
        index = int(index_text)
        if not 0 <= index < len(formula_bytes):
            issues.append(
                DataIssue(
                    list_file,
                    number,
                    "index out of range",
                    f"{index}, formula file has {len(formula_bytes)} lines",
                )
            )
            continue
        if index not in canonical:
            canonical[index] = _formula(
                formulas_file, formula_bytes, index, normalized_input, issues, list_file, number
            )
        latex = canonical[index]
        if latex is None:
            continue
        image = folder / _with_suffix(name)
        if check and not checker.exists(image):
            issues.append(DataIssue(list_file, number, "missing image", str(image)))
            continue
        samples.append(Sample(image, latex, source))
    return samples, issues


def _formula(
    file: Path,
    lines: Sequence[bytes],
    index: int,
    normalized_input: bool,
    issues: list[DataIssue],
    list_file: Path,
    list_line: int,
) -> str | None:
    """Canonical formula at 0-based ``index``; issues point at the formula line and name the list line."""
    where = f"used by {list_file.name}:{list_line}"
    try:
        raw = lines[index].decode("utf-8")
    except UnicodeDecodeError as e:
        issues.append(DataIssue(file, index + 1, "not UTF-8", f"byte {e.start}; {where}"))
        return None
    latex = _canonical(raw, file, index + 1, issues, where)
    if latex is not None and normalized_input and latex != " ".join(raw.split()):
        issues.append(DataIssue(file, index + 1, "not canonical", f"normalises to {latex[:60]!r}; {where}"))
        return None
    return latex


# ------------------------------------------------------------------------------------ CROHME


def read_crohme(
    caption_file: str | Path, images_dir: str | Path, *, check_images: bool = True, source: str | None = None
) -> tuple[list[Sample], list[DataIssue]]:
    """Samples of a CROHME caption file (``KEY<TAB>tokens``); the image is ``KEY_0.png`` (or KEY.png, bmp)."""
    caption_file, images_dir = Path(caption_file), Path(images_dir)
    issues: list[DataIssue] = []
    source = source or f"{caption_file.parent.name}/{caption_file.stem.replace('_caption', '')}"
    checker = _ImageChecker()
    samples: list[Sample] = []
    for number, line in text_lines(caption_file, issues):
        key, tab, caption = line.partition("\t")
        if not tab:  # some copies separate with spaces
            key, _, caption = line.strip().partition(" ")
        key = key.strip()
        latex = _canonical(caption, caption_file, number, issues, f"key {key}")
        if latex is None:
            continue
        candidates = [images_dir / f"{key}{end}" for end in ("_0.png", ".png", "_0.bmp", ".bmp")]
        image = next((c for c in candidates if checker.exists(c)), None)
        if image is None:
            if check_images:
                issues.append(DataIssue(caption_file, number, "missing image", str(candidates[0])))
                continue
            image = candidates[0]
        samples.append(Sample(image, latex, source))
    return samples, issues


# ------------------------------------------------------------------------------------ folder format


def read_folder(
    path: str | Path, *, check_images: bool = True, source: str | None = None
) -> tuple[list[Sample], list[DataIssue]]:
    """Samples of our folder format: ``DIR/labels.tsv`` of ``IMAGE_PATH<TAB>LATEX``, paths relative to DIR."""
    path = Path(path)
    labels = path if path.is_file() else path / LABELS_FILE
    root = labels.parent
    issues: list[DataIssue] = []
    source = source or root.name
    checker = _ImageChecker()
    samples: list[Sample] = []
    for number, line in text_lines(labels, issues):
        rel, tab, raw = line.partition("\t")
        if not tab:
            issues.append(DataIssue(labels, number, "malformed line", f"no tab in {line[:80]!r}"))
            continue
        latex = _canonical(raw, labels, number, issues)
        if latex is None:
            continue
        image = root / rel  # an absolute path stays absolute
        if check_images and not checker.exists(image):
            issues.append(DataIssue(labels, number, "missing image", str(image)))
            continue
        samples.append(Sample(image, latex, source))
    return samples, issues


# ------------------------------------------------------------------------------------ guessing


def _is_list_file(path: Path) -> bool:
    """Whether a file's first lines look like an IM2LATEX list."""
    try:
        with open(path, "rb") as f:
            head = [ln.decode("utf-8", "replace") for ln in f.read(4096).split(b"\n")[:20]]
    except OSError:
        return False
    return detect_list_layout(head[:-1] if len(head) > 1 else head) is not None


def _formula_file_beside(folder: Path) -> Path | None:
    """The IM2LATEX formula file in a folder: a .lst/.txt whose name contains "formula"."""
    found = sorted(
        p for p in folder.iterdir() if p.is_file() and "formula" in p.name and p.suffix in (".lst", ".txt")
    )
    return found[0] if found else None


def _images_dir_beside(folder: Path) -> Path | None:
    """The image folder beside IM2LATEX lists: ``images``, ``images_val``, ``formula_images``..."""
    found = sorted(p for p in folder.iterdir() if p.is_dir() and "image" in p.name)
    return found[0] if found else None


def _crohme_images_dir(caption: Path) -> Path:
    """Image folder of a CROHME caption file.

    ``test_2014_caption.txt`` -> ``test_2014/``; ``train_caption.txt`` -> the folder starting with ``train``.
    """
    stem = caption.stem.replace("_caption", "").replace("caption", "").strip("_")
    exact = caption.parent / stem
    if exact.is_dir():
        return exact
    prefix = stem.split("_")[0]
    found = sorted(p for p in caption.parent.iterdir() if p.is_dir() and p.name.startswith(prefix))
    return found[0] if found else exact


def read_dataset(path: str | Path, *, check_images: bool = True) -> tuple[list[Sample], list[DataIssue]]:
    """Read a dataset in any supported layout, guessed from ``path``.

    The rules, first match wins:

    1. a folder holding ``labels.tsv``, or any ``.tsv`` file: the folder format;
    2. a folder holding ``*caption*.txt`` files: CROHME, every caption file, images in the folder named like
       the caption file (``test_2014_caption.txt`` -> ``test_2014/``, ``train_caption.txt`` -> ``train*/``);
       a ``*caption*.txt`` file: that caption file alone;
    3. a folder holding a formula file (``*formula*.lst``/``.txt``): IM2LATEX, every list file in the folder
       (recognised by content), images in its ``*image*`` sub-folder;
       any other file: an IM2LATEX list file, with the formula file and images beside it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / LABELS_FILE).is_file():
            return read_folder(path, check_images=check_images)
        captions = sorted(path.glob("*caption*.txt"))
        if captions:
            return _concat(read_crohme(c, _crohme_images_dir(c), check_images=check_images) for c in captions)
        formulas = _formula_file_beside(path)
        if formulas is None:
            raise ValueError(
                f"{path}: no labels.tsv, *caption*.txt or IM2LATEX formula file; see read_dataset's rules"
            )
        lists = sorted(p for p in path.iterdir() if p.is_file() and p != formulas and _is_list_file(p))
        images = _images_dir_beside(path)
        return _concat(read_im2latex(formulas, lst, images, check_images=check_images) for lst in lists)
    if path.suffix == ".tsv":
        return read_folder(path, check_images=check_images)
    if "caption" in path.name:
        return read_crohme(path, _crohme_images_dir(path), check_images=check_images)
    formulas = _formula_file_beside(path.parent)
    if formulas is None:
        raise ValueError(f"{path}: no IM2LATEX formula file (*formula*.lst) beside this list file")
    return read_im2latex(formulas, path, _images_dir_beside(path.parent), check_images=check_images)


def _concat(parts: Iterable[tuple[list[Sample], list[DataIssue]]]) -> tuple[list[Sample], list[DataIssue]]:
    samples: list[Sample] = []
    issues: list[DataIssue] = []
    for s, i in parts:
        samples.extend(s)
        issues.extend(i)
    return samples, issues


def format_issues(issues: Sequence[DataIssue], examples: int = 3) -> str:
    """Counts of issues by reason, each with its first few occurrences as ``file:line``."""
    by_reason: dict[str, list[DataIssue]] = defaultdict(list)
    for issue in issues:
        by_reason[issue.reason].append(issue)
    rows: list[str] = []
    for reason, group in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        rows.append(f"{len(group):>8}  {reason}")
        rows.extend(f"          {issue}" for issue in group[:examples])
        if len(group) > examples:
            rows.append(f"          ... and {len(group) - examples} more")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------ writers


def _tsv_field(text: str) -> str:
    """A label on one TSV line: tabs and line breaks become spaces."""
    return " ".join(text.split())


def write_folder(samples: Sequence[Sample], out_dir: str | Path, *, link_images: bool = False) -> Path:
    """Write samples in the folder format and return the labels file.

    Images are copied to ``out_dir/images/`` (names kept, made unique), or with ``link_images`` left where
    they are and written as absolute paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    used: set[str] = set()
    if not link_images:
        (out_dir / "images").mkdir(exist_ok=True)
    for k, sample in enumerate(samples):
        if link_images:
            rel = str(Path(sample.image).resolve())
        else:
            name = sample.image.name
            if name in used:
                name = f"{sample.image.stem}_{k}{sample.image.suffix}"
            used.add(name)
            shutil.copyfile(sample.image, out_dir / "images" / name)
            rel = f"images/{name}"
        rows.append(f"{rel}\t{_tsv_field(sample.latex)}\n")
    labels = out_dir / LABELS_FILE
    labels.write_text("".join(rows), encoding="utf-8")
    return labels


def copy_as_png(src: Path, dst: Path) -> None:
    """Copy a PNG, or convert another image format to PNG."""
    if src.suffix.lower() == ".png":
        shutil.copyfile(src, dst)
    else:
        from PIL import Image

        with Image.open(src) as img:
            img.save(dst, format="PNG")


def image_names(count: int, digits: int = 7) -> list[str]:
    """Zero-padded image names ``0000000.png`` ... wide enough for ``count`` images."""
    width = max(digits, len(str(max(count - 1, 0))))
    return [f"{k:0{width}d}.png" for k in range(count)]


def write_im2latex(
    splits: dict[str, Sequence[Sample]],
    out_dir: str | Path,
    *,
    write_image: Callable[[Path, Path], None] | None = copy_as_png,
) -> tuple[dict[str, Path], list[tuple[Sample, str]]]:
    """Write splits in the IM2LATEX layout; return the files written (``formulas``, each split) and failures.

    One formula file ``im2latex_formulas.norm.lst`` (canonical labels, line k = sample k, the splits one after
    another) and ``im2latex_{split}_filter.lst`` per split with lines ``IMAGE INDEX``; images become
    ``images/0000000.png`` ... by ``write_image(src, dst)`` (None: write the lists only). A sample whose image
    cannot be written (``OSError``/``ValueError``) is left out and returned with the reason.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = image_names(sum(len(s) for s in splits.values()))
    if write_image is not None:
        (out_dir / "images").mkdir(exist_ok=True)
    formulas: list[str] = []
    failures: list[tuple[Sample, str]] = []
    written: dict[str, Path] = {}
    for split, samples in splits.items():
        rows = []
        for sample in samples:
            index = len(formulas)
            if write_image is not None:
                try:
                    write_image(Path(sample.image), out_dir / "images" / names[index])
                except (OSError, ValueError) as e:
                    failures.append((sample, str(e)))
                    continue
            formulas.append(_tsv_field(sample.latex) + "\n")
            rows.append(f"{names[index]} {index}\n")
        written[split] = out_dir / f"im2latex_{split}_filter.lst"
        written[split].write_text("".join(rows), encoding="utf-8")
    written["formulas"] = out_dir / FORMULA_FILE
    written["formulas"].write_text("".join(formulas), encoding="utf-8")
    return written, failures
