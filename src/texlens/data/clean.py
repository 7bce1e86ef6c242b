"""The seed's label filters (report §4.1): bad labels, labels outside the vocabulary, formulas TeX rejects.

The seed dropped Mathpix ``error mathpix`` rows, empty labels and prose, then tokenised each raw label by
greedy longest match against the vocabulary: a character that no vocabulary token matches (CJK text, in
practice) drops the label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from texlens.latex import ALIASES, SPECIAL_TOKENS, LatexError, Vocab, normalize

__all__ = [
    "LongestMatch",
    "TexCheck",
    "ascii_vocabulary",
    "filter_labels",
    "is_bad_label",
    "longest_match_tokenize",
]

# Given canonical formulas, the reason TeX rejects each (None: it compiles). The renderer provides one.
TexCheck = Callable[[list[str]], list[str | None]]

# Reasons a label is dropped, as keys of filter_labels' result.
EMPTY = "empty"
MATHPIX_ERROR = "mathpix error"
GARBLED = "garbled text"
PROSE = "prose, not LaTeX"
INVALID = "invalid LaTeX"
OUT_OF_VOCABULARY = "out of vocabulary"
TEX_REJECTED = "rejected by TeX"

# CJK radicals, punctuation, kana, Han (with extension A and compatibility), Hangul, full-width forms.
_CJK = re.compile(
    r"[\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    r"\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_MATH_SIGNS = re.compile(r"[\\^_{}=<>+*/|\d]")
_WORD = re.compile(r"[A-Za-z]{3,}")
# Below this share of CJK characters a label is a formula with some Chinese in \text{} (for the vocabulary).
PROSE_CJK_SHARE = 0.5
# A label with this many words and no math sign at all is an English sentence.
PROSE_WORDS = 3


def is_bad_label(raw: str | None) -> str | None:
    """Why a raw label is no formula ("empty", "mathpix error", "prose, not LaTeX", ...), else None."""
    if raw is None or not raw.strip():
        return EMPTY
    low = raw.lower()
    if "error mathpix" in low or "mathpix error" in low:
        return MATHPIX_ERROR
    if _CONTROL.search(raw):
        return GARBLED
    visible = "".join(raw.split())
    if len(_CJK.findall(visible)) >= PROSE_CJK_SHARE * len(visible):
        return PROSE
    if not _MATH_SIGNS.search(raw) and len(_WORD.findall(raw)) >= PROSE_WORDS:
        return PROSE
    return None


class LongestMatch:
    """Greedy longest-match tokeniser over a fixed set of tokens (the seed's way to tokenise raw labels)."""

    def __init__(self, vocab_tokens: Iterable[str]):
        tokens = {t for t in vocab_tokens if t and t not in SPECIAL_TOKENS}
        self.tokens = frozenset(tokens)
        # Candidate lengths per first character, longest first: at most a handful of lookups per position.
        lengths: dict[str, set[int]] = {}
        for t in tokens:
            lengths.setdefault(t[0], set()).add(len(t))
        self._lengths = {c: sorted(ls, reverse=True) for c, ls in lengths.items()}

    def __call__(self, text: str) -> list[str] | None:
        """Tokens of ``text`` (spaces between tokens skipped), or None when a character matches no token."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if text[i].isspace():
                i += 1
                continue
            for length in self._lengths.get(text[i], ()):
                piece = text[i : i + length]
                if piece in self.tokens:
                    out.append(piece)
                    i += length
                    break
            else:
                return None
        return out


def longest_match_tokenize(text: str, vocab_tokens: Iterable[str] | LongestMatch) -> list[str] | None:
    """Greedy longest match of ``text`` against ``vocab_tokens``; None when some character matches nothing."""
    matcher = vocab_tokens if isinstance(vocab_tokens, LongestMatch) else LongestMatch(vocab_tokens)
    return matcher(text)


def _raw_spellings(tokens: Iterable[str]) -> set[str]:
    """Vocabulary tokens plus the raw spellings normalisation maps onto them (``\\le`` for ``\\leq``)."""
    tokens = set(tokens)
    return tokens | {raw for raw, canonical in ALIASES.items() if canonical in tokens}


def ascii_vocabulary(labels: Iterable[str]) -> set[str]:
    """The ASCII tokens of the labels' canonical forms: a vocabulary like the seed's, without CJK text."""
    tokens: set[str] = set()
    for raw in labels:
        try:
            tokens.update(t for t in normalize(raw).split() if t.isascii())
        except LatexError:
            continue
    return tokens


def filter_labels(
    formulas: Sequence[str],
    vocab: Vocab | Iterable[str] | None = None,
    *,
    tex_check: TexCheck | None = None,
) -> tuple[list[int], dict[str, list[int]]]:
    """Indices of raw labels that pass the seed's filters, and the dropped indices by reason.

    In order: :func:`is_bad_label`; :func:`texlens.latex.normalize` must parse it; with ``vocab`` (a
    :class:`Vocab` or its tokens) the raw label must tokenise by longest match; with ``tex_check`` TeX must
    accept its canonical form.
    """
    dropped: dict[str, list[int]] = {}
    matcher = None
    if vocab is not None:
        tokens = vocab.itos if isinstance(vocab, Vocab) else vocab
        matcher = LongestMatch(_raw_spellings(tokens))
    kept: list[int] = []
    canonical: list[str] = []
    for index, raw in enumerate(formulas):
        reason = is_bad_label(raw)
        if reason is None:
            try:
                latex = normalize(raw)
            except LatexError:
                reason = INVALID
        if reason is None and matcher is not None and matcher(raw) is None:
            reason = OUT_OF_VOCABULARY
        if reason is None:
            kept.append(index)
            canonical.append(latex)
        else:
            dropped.setdefault(reason, []).append(index)
    if tex_check is not None and kept:
        verdicts = tex_check(canonical)
        if len(verdicts) != len(canonical):
            raise ValueError(f"tex_check returned {len(verdicts)} verdicts for {len(canonical)} formulas")
        rejected = [index for index, verdict in zip(kept, verdicts, strict=True) if verdict is not None]
        if rejected:
            dropped[TEX_REJECTED] = rejected
            kept = [index for index, verdict in zip(kept, verdicts, strict=True) if verdict is None]
    return kept, dropped
