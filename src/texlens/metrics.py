"""Recognition metrics on token lists: edit similarity, exact match, BLEU-4, CROHME ExpRate, image match.

Every metric compares canonical token lists (``texlens.latex.normalize(...).split()``), so two spellings that
normalise alike count as equal. ``image_match`` goes further: it renders both formulas with TeX and compares pixels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

__all__ = [
    "MetricSet",
    "bleu4",
    "edit_distance",
    "edit_similarity",
    "exact_match",
    "exprate",
    "image_match",
    "image_matches",
    "mean_edit_similarity",
]

Tokens = Sequence[str]
# formulas -> one grey image (or None when TeX rejects the formula) per formula
Renderer = Callable[[list[str]], list["np.ndarray | None"]]


def edit_distance(pred: Tokens, ref: Tokens) -> int:
    """Levenshtein distance between two token lists (insertions, deletions, substitutions of whole tokens)."""
    return int(Levenshtein.distance(list(pred), list(ref)))


def edit_similarity(pred: Tokens, ref: Tokens) -> float:
    """1 - token Levenshtein distance / length of the longer list; 1.0 for two empty lists."""
    longest = max(len(pred), len(ref))
    if longest == 0:
        return 1.0
    return 1.0 - edit_distance(pred, ref) / longest


def mean_edit_similarity(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Corpus edit similarity: the mean of the per-sample similarities."""
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return sum(edit_similarity(p, r) for p, r in zip(preds, refs, strict=True)) / len(preds)


def exact_match(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Fraction of predictions whose token list equals the reference."""
    return exprate(preds, refs, max_errors=0)


def exprate(preds: Sequence[Tokens], refs: Sequence[Tokens], max_errors: int = 0) -> float:
    """CROHME expression rate: fraction of predictions within ``max_errors`` token edits of the reference."""
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    hits = sum(edit_distance(p, r) <= max_errors for p, r in zip(preds, refs, strict=True))
    return hits / len(preds)


def _ngrams(tokens: Tokens, n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(preds: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002): uniform weights, clipped n-gram precisions, brevity penalty.

    Counts are summed over the corpus before dividing, and there is no smoothing: a corpus without a
    single matching 4-gram scores 0, as in the standard (multi-bleu / sacrebleu "none") definition.
    """
    _check_lengths(preds, refs)
    matches = [0] * 4
    totals = [0] * 4
    pred_len = ref_len = 0
    for pred, ref in zip(preds, refs, strict=True):
        pred_len += len(pred)
        ref_len += len(ref)
        for n in range(1, 5):
            pred_counts = _ngrams(pred, n)
            ref_counts = _ngrams(ref, n)
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in pred_counts.items())
            totals[n - 1] += max(len(pred) - n + 1, 0)
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = 1.0 if pred_len > ref_len else math.exp(1.0 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def _check_lengths(preds: Sequence, refs: Sequence) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")


# ---------------------------------------------------------------- image match


def _ink_crop(image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean ink mask cropped to its bounding box; the background is whatever the border mostly is."""
    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    if grey.max() > 1.0:
        grey = grey / 255.0
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = np.abs(grey - background) > threshold * max(background, 1.0 - background)
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool)
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _same_pixels(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Equal ink boxes whose differing pixels are at most ``tolerance`` of the ink they cover."""
    if a.shape != b.shape or a.size == 0:
        return False
    differing = int(np.count_nonzero(a ^ b))
    return differing <= tolerance * max(int(np.count_nonzero(a | b)), 1)


def _default_renderer(formulas: list[str]) -> list[np.ndarray | None]:
    from texlens.data.render import render_many_pixels

    return render_many_pixels(formulas)


def image_matches(
    preds: Sequence[str], refs: Sequence[str], renderer: Renderer | None = None, tolerance: float = 0.01
) -> list[bool]:
    """Per pair: do prediction and reference render to the same pixels? A formula TeX rejects never matches.

    ``renderer`` maps LaTeX strings to grey images (default ``texlens.data.render.render_many_pixels``);
    both lists are rendered in one call because starting TeX costs more than a formula, and each distinct string
    once (a prediction equal to its reference, the common case, costs one rendering, not two).
    """
    _check_lengths(preds, refs)
    if not preds:
        return []
    render = renderer or _default_renderer
    unique = list(dict.fromkeys([*preds, *refs]))
    rendered = render(unique)
    if len(rendered) != len(unique):
        raise ValueError(f"renderer returned {len(rendered)} images for {len(unique)} formulas")
    by_latex = dict(zip(unique, rendered, strict=True))
    out = []
    for pred_img, ref_img in zip((by_latex[p] for p in preds), (by_latex[r] for r in refs), strict=True):
        if pred_img is None or ref_img is None:
            out.append(False)
        else:
            out.append(_same_pixels(_ink_crop(pred_img), _ink_crop(ref_img), tolerance))
    return out


def image_match(
    pred_latex: str, ref_latex: str, renderer: Renderer | None = None, tolerance: float = 0.01
) -> bool:
    """Whether one prediction renders to the same pixels as its reference (see :func:`image_matches`)."""
    return image_matches([pred_latex], [ref_latex], renderer, tolerance)[0]


# ---------------------------------------------------------------- accumulation


class MetricSet:
    """Accumulates predictions and references batch by batch; :meth:`compute` returns every metric as a dict."""

    def __init__(self) -> None:
        self.preds: list[list[str]] = []
        self.refs: list[list[str]] = []
        self.image_hits: list[bool] = []

    def __len__(self) -> int:
        return len(self.preds)

    def update(self, preds: Sequence[Tokens], refs: Sequence[Tokens]) -> None:
        """Add a batch of predicted and reference token lists."""
        _check_lengths(preds, refs)
        self.preds.extend(list(p) for p in preds)
        self.refs.extend(list(r) for r in refs)

    def update_image_match(self, hits: Sequence[bool]) -> None:
        """Add image-match outcomes (from :func:`image_matches`) for samples already added."""
        self.image_hits.extend(bool(h) for h in hits)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.__init__()

    def compute(self) -> dict[str, float]:
        """All metrics over what was accumulated: edit similarity, exact match, BLEU-4, ExpRate <=0/1/2."""
        preds, refs = self.preds, self.refs
        result = {
            "count": float(len(preds)),
            "edit_similarity": mean_edit_similarity(preds, refs),
            "exact_match": exact_match(preds, refs),
            "bleu4": bleu4(preds, refs),
            "exprate": exprate(preds, refs, 0),
            "exprate_1": exprate(preds, refs, 1),
            "exprate_2": exprate(preds, refs, 2),
        }
        if self.image_hits:
            result["image_match"] = sum(self.image_hits) / len(self.image_hits)
        return result
