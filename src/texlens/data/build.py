"""The dataset builder: the training and validation sets we train on, made from ../shared/data.

Printed data is rendered by us with TeX Live (``cn_math`` train formulas in several fonts and DPIs, IM2LATEX formulas
of the training part), real images are kept as they are (IM2LATEX validation split into a training part and a
held-back part, CROHME), and no validation formula appears in any training set.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from texlens.data.formats import LABELS_FILE, Sample, read_crohme, read_im2latex, write_folder
from texlens.data.render import EXTRA_FONTS, MAIN_FONTS, MORE_FONTS, UNSEEN_FONTS, render_formulas
from texlens.data.synth import synthesize, synthesize_bold, synthesize_words
from texlens.latex import to_latex

# IM2LATEX validation images whose formula hashes into these buckets (of 10) are held back for validation.
IM2LATEX_HELD_BACK = frozenset({0, 1, 2, 3})
# Every set the builder writes.
SETS = (
    "train_cn_math",
    "train_synth",
    "train_synth_im",
    "train_words",
    "train_bold",
    "train_im2latex_render",
    "train_fonts",
    "train_fonts2",
    "train_im2latex_real",
    "train_crohme",
    "val_cn_math",
    "val_im2latex",
    "val_crohme",
)


@dataclass
class BuildReport:
    """What the builder wrote: sample counts per dataset and what it dropped."""

    datasets: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [f"{name:<24} {n:>8} samples" for name, n in self.datasets.items()]
        return "\n".join(rows + self.notes)


def _bucket(canonical: str) -> int:
    return int(hashlib.md5(canonical.encode("utf-8")).hexdigest(), 16) % 10


def split_im2latex(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Split IM2LATEX validation samples by formula into (training part, held-back part)."""
    train = [s for s in samples if _bucket(s.latex) not in IM2LATEX_HELD_BACK]
    held = [s for s in samples if _bucket(s.latex) in IM2LATEX_HELD_BACK]
    return train, held


def _unique_formulas(samples: list[Sample], exclude: set[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for s in samples:
        if s.latex not in seen and s.latex not in exclude:
            seen.add(s.latex)
            out.append(s.latex)
    return out


def _render_in_fonts(formulas: list[str], out: Path, fonts: list[str], dpi, jobs: int, seed: int) -> int:
    """Render each formula once, in a font drawn at random (seeded) from ``fonts``; returns images made."""
    rng = random.Random(seed)
    by_font: dict[str, list[str]] = {f: [] for f in fonts}
    for f in formulas:
        by_font[rng.choice(fonts)].append(f)
    rows: list[str] = []
    for font, group in by_font.items():
        if group:
            render_formulas(
                [to_latex(f) for f in group], out / font, fonts=[font], dpi=dpi, jobs=jobs, seed=seed
            )
            lines = (out / font / LABELS_FILE).read_text(encoding="utf-8").splitlines()
            rows += [f"{font}/{line}" for line in lines if line]
    # One labels file for the whole set, pointing into the per-font folders.
    (out / LABELS_FILE).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def build_datasets(
    shared: Path,
    out: Path,
    *,
    fonts: list[str] | tuple[str, ...] = MAIN_FONTS,
    val_font: str = "euler",
    limit: int | None = None,
    jobs: int = 2,
    dpi: tuple[int, int] = (110, 260),
    seed: int = 0,
    synth: int = 30000,
    synth_im: int = 20000,
    words: int = 20000,
    bold: int = 10000,
    more_fonts: list[str] | tuple[str, ...] = MORE_FONTS,
    more_fonts_count: int = 24000,
    extra_fonts: list[str] | tuple[str, ...] = EXTRA_FONTS,
    extra_fonts_count: int = 20000,
    only: set[str] | frozenset[str] | None = None,
) -> BuildReport:
    """Write every training and validation set under ``out`` (folder format) and report their sizes.

    ``train_synth`` renders ``synth`` formulas recombined from every printed training formula (mostly
    ``cn_math``'s), ``train_synth_im`` ``synth_im`` recombined from the IM2LATEX training part's alone (arXiv
    notation, longer formulas). ``train_words`` renders ``words`` training formulas, half IM2LATEX's and half
    cn_math's, with upright words added (labels, conditions; made-up words mostly, so they are read letter by
    letter). ``train_bold`` renders ``bold`` of them, half each, with symbols set in bold the way each source writes
    bold (IM2LATEX ``{ \\bf x }``, cn_math ``\\mathbf { x }`` and ``\\boldsymbol { x }``). ``train_fonts`` renders
    ``more_fonts_count`` of the cn_math and IM2LATEX training formulas (a seeded sample) in ``more_fonts``, shapes
    the other sets never show; ``train_fonts2`` another sample of ``extra_fonts_count`` in ``extra_fonts``. ``only``
    names the sets to write (None: all).
    """
    shared, out = Path(shared), Path(out)
    report = BuildReport()
    unknown = set(only or ()) - set(SETS)
    if unknown:
        raise ValueError(f"unknown set(s) {sorted(unknown)}; choose from {', '.join(SETS)}")
    if val_font in {*more_fonts, *fonts, *extra_fonts}:
        raise ValueError(f"the held-out font {val_font!r} must not be a training font")
    unseen = sorted(set(UNSEEN_FONTS) & {*more_fonts, *fonts, *extra_fonts})
    if unseen:
        raise ValueError(f"{unseen} are held out from training (UNSEEN_FONTS); choose other training fonts")

    def wanted(name: str) -> bool:
        return only is None or name in only

    cn = shared / "cn_math"
    formula_file = cn / "im2latex_formulas.norm.lst"
    cn_train, _ = read_im2latex(formula_file, cn / "im2latex_train_filter.lst")
    cn_val, _ = read_im2latex(formula_file, cn / "im2latex_validate_filter.lst")
    im = shared / "im2latex100k"
    im_all, _ = read_im2latex(im / "val.formulas.norm.txt", im / "val.matching.txt", im / "images_val")
    im_train, im_held = split_im2latex(im_all)
    cr = shared / "crohme"
    crohme_train, _ = read_crohme(cr / "train_caption.txt", cr / "train_2014")
    crohme_test, _ = read_crohme(cr / "test_2014_caption.txt", cr / "test_2014")
    if limit:  # a quick build: at most ``limit`` samples from each split
        cn_train, cn_val = cn_train[:limit], cn_val[:limit]
        im_train, im_held = im_train[:limit], im_held[:limit]
        crohme_train, crohme_test = crohme_train[:limit], crohme_test[:limit]

    # Nothing that is validated on may be trained on.
    held_out = {s.latex for s in cn_val} | {s.latex for s in im_held} | {s.latex for s in crohme_test}

    if wanted("val_cn_math"):
        rep = render_formulas(
            [to_latex(f) for f in _unique_formulas(cn_val, set())],
            out / "val_cn_math",
            fonts=[val_font],
            dpi=200,
            jobs=jobs,
            seed=seed,
        )
        report.datasets["val_cn_math"] = len(rep.rendered)
        report.notes.append(f"val_cn_math rendered in held-out font {val_font!r}: {len(rep.failures)} failed")

    train_formulas = _unique_formulas(cn_train, held_out)
    report.notes.append(
        f"cn_math train: {len(cn_train)} labels, {len(train_formulas)} unique after removing validation"
    )
    im_formulas = _unique_formulas(im_train, held_out)
    printed = train_formulas + im_formulas
    rendered = {
        "train_cn_math": lambda: (train_formulas, fonts, seed),
        "train_im2latex_render": lambda: (im_formulas, fonts, seed + 1),
        # Recombined formulas, for notation the real training formulas rarely show.
        "train_synth": lambda: (
            synthesize(printed, synth, seed=seed, exclude=held_out),
            fonts,
            seed + 2,
        ),
        # The same from the IM2LATEX training formulas only: a few thousand real ones, read many times over.
        "train_synth_im": lambda: (
            synthesize(im_formulas, synth_im, seed=seed + 5, exclude=held_out),
            fonts,
            seed + 5,
        ),
        # Words in upright text, on IM2LATEX and cn_math training formulas alike.
        "train_words": lambda: (
            synthesize_words(im_formulas, words // 2, seed=seed + 6, exclude=held_out)
            + synthesize_words(train_formulas, words - words // 2, seed=seed + 7, exclude=held_out),
            fonts,
            seed + 6,
        ),
        # Bold symbols, which IM2LATEX's small renders show only by their weight.
        "train_bold": lambda: (
            synthesize_bold(im_formulas, bold // 2, seed=seed + 8, style="im", exclude=held_out)
            + synthesize_bold(train_formulas, bold - bold // 2, seed=seed + 9, style="cn", exclude=held_out),
            fonts,
            seed + 8,
        ),
        # Other font shapes, on formulas the other sets also draw (a sample, so the set stays small).
        "train_fonts": lambda: (
            random.Random(seed + 3).sample(printed, min(more_fonts_count, len(printed))),
            more_fonts,
            seed + 3,
        ),
        "train_fonts2": lambda: (
            random.Random(seed + 4).sample(printed, min(extra_fonts_count, len(printed))),
            extra_fonts,
            seed + 4,
        ),
    }
    for name, make in rendered.items():
        if wanted(name):
            formulas, set_fonts, set_seed = make()
            report.datasets[name] = _render_in_fonts(
                formulas, out / name, list(set_fonts), dpi, jobs, set_seed
            )

    # Real images stay where they are: the folder format points at them by absolute path.
    for name, samples in {
        "train_im2latex_real": [s for s in im_train if s.latex not in held_out],
        "val_im2latex": im_held,
        # CROHME keeps its official writer-disjoint split: the same formula by another hand is a new sample.
        "train_crohme": crohme_train,
        "val_crohme": crohme_test,
    }.items():
        if wanted(name):
            write_folder(samples, out / name, link_images=True)
            report.datasets[name] = len(samples)
    return report
