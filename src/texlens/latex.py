"""One LaTeX tokeniser and normaliser for training targets, predictions and metrics.

Reads Mathpix-style raw LaTeX (``\\frac{1}{2}``), IM2LATEX's KaTeX-normalised token strings
(``{ \\frac { 1 } { 2 } }``) and CROHME captions, and writes one canonical space-separated token form
that renders to the same pixels as the input.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "LatexError",
    "Vocab",
    "normalize",
    "normalize_tokens",
    "to_latex",
    "tokenize",
    "SPECIAL_TOKENS",
]


class LatexError(ValueError):
    """A formula that cannot be tokenised (for example unbalanced braces)."""


# Commands whose braced argument is typeset in text mode, where spaces matter.
TEXT_COMMANDS = frozenset(
    r"\text \mbox \textrm \textbf \textit \textsf \texttt \textnormal \textup \emph \hbox".split()
)

# Pixel-identical spellings of the same symbol, mapped to one canonical spelling.
ALIASES = {
    r"\le": r"\leq",
    r"\ge": r"\geq",
    r"\ne": r"\neq",
    r"\to": r"\rightarrow",
    r"\gets": r"\leftarrow",
    r"\lbrace": r"\{",
    r"\rbrace": r"\}",
    r"\land": r"\wedge",
    r"\lor": r"\vee",
    r"\lnot": r"\neg",
    r"\owns": r"\ni",
    r"\lt": "<",
    r"\gt": ">",
    r"\ ": "~",
    r"\dotsc": r"\ldots",
}

# Number of mandatory arguments of commands whose single-token arguments we brace.
ARITY = {
    **dict.fromkeys(
        r"\frac \dfrac \tfrac \cfrac \binom \dbinom \tbinom \stackrel \overset \underset".split(), 2
    ),
    **dict.fromkeys(
        (
            r"\sqrt \hat \bar \vec \dot \ddot \dddot \tilde \widehat \widetilde \overline \underline"
            r" \overrightarrow \overleftarrow \overleftrightarrow \underrightarrow \underleftarrow"
            r" \overbrace \underbrace \check \breve \acute \grave \mathring \mathrm \mathbf \mathit"
            r" \mathcal \mathbb \mathsf \mathtt \mathfrak \mathscr \boldsymbol \bm \pmb \operatorname"
            r" \operatorname* \boxed \xrightarrow \xleftarrow \not \cancel"
        ).split(),
        1,
    ),
    **dict.fromkeys(TEXT_COMMANDS, 1),
}
# \not takes the next token, but "\not =" must stay unbraced: \not{=} overlays differently.
ARITY.pop(r"\not")

SCRIPTS = ("^", "_")
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>", "[MASK]")


def tokenize(latex: str) -> list[str]:
    """Split raw or pre-tokenised LaTeX into tokens; spaces inside text mode become ``~``."""
    tokens: list[str] = []
    # Stack of brace groups: True where the group is in text mode and its spaces are real spaces.
    modes: list[bool] = []
    text_arg_pending = False  # a text command was seen; its next group is text mode
    i, n = 0, len(latex)

    def in_text() -> bool:
        return bool(modes) and modes[-1]

    while i < n:
        c = latex[i]
        if c.isspace():
            j = i
            while j < n and latex[j].isspace():
                j += 1
            # TeX eats spaces after a control word, and math mode ignores spaces.
            if in_text() and tokens and not _is_control_word(tokens[-1]) and tokens[-1] != "~":
                tokens.append("~")
            i = j
            continue
        if c == "%":  # comment to end of line
            while i < n and latex[i] != "\n":
                i += 1
            continue
        if c == "\\":
            if i + 1 >= n:
                raise LatexError("formula ends with a lone backslash")
            if latex[i + 1].isalpha():
                j = i + 1
                while j < n and latex[j].isalpha():
                    j += 1
                name = latex[i:j]
                if j < n and latex[j] == "*" and name in (r"\operatorname",):
                    name += "*"
                    j += 1
                if name in (r"\begin", r"\end"):
                    k = j
                    while k < n and latex[k].isspace():
                        k += 1
                    if k < n and latex[k] == "{":
                        close = latex.find("}", k)
                        if close < 0:
                            raise LatexError(f"{name} without closing brace")
                        env = "".join(latex[k + 1 : close].split())
                        name = f"{name}{{{env}}}"
                        j = close + 1
                tokens.append(name)
                if name in TEXT_COMMANDS:
                    text_arg_pending = True
                i = j
                continue
            sym = latex[i : i + 2]
            tokens.append("~" if sym in ("\\ ", "\\\t", "\\\n") else sym)
            i += 2
            continue
        if c == "{":
            if text_arg_pending:
                modes.append(not _pretokenized_text(latex, i))
            else:
                modes.append(in_text())
            text_arg_pending = False
            tokens.append("{")
            i += 1
            continue
        if c == "}":
            if not modes:
                raise LatexError("unbalanced braces: '}' without '{'")
            modes.pop()
            tokens.append("}")
            i += 1
            continue
        if text_arg_pending and not c.isspace():
            # "\text A": a single-character argument.
            text_arg_pending = False
        tokens.append(c)
        i += 1
    if modes:
        raise LatexError(f"unbalanced braces: {len(modes)} '{{' not closed")
    return tokens


def _pretokenized_text(latex: str, open_pos: int) -> bool:
    """Whether the text group opening at ``open_pos`` is already tokenised (``{ i f ~ }``, spaces separate tokens).

    IM2LATEX and our canonical form write text one character per token; raw Mathpix text (``{ A. }``) has words.
    """
    depth, k = 0, open_pos
    while k < len(latex):
        if latex[k] == "\\":
            k += 2
            continue
        if latex[k] == "{":
            depth += 1
        elif latex[k] == "}":
            depth -= 1
            if depth == 0:
                break
        k += 1
    items = latex[open_pos + 1 : k].split()
    return bool(items) and all(len(it) == 1 or it.startswith("\\") for it in items)


def _is_control_word(tok: str) -> bool:
    return len(tok) > 1 and tok[0] == "\\" and tok[1].isalpha()


def _group_end(tokens: Sequence[str], start: int) -> int:
    """Index one past the balanced group that starts with ``{`` at ``start``."""
    depth = 0
    for k in range(start, len(tokens)):
        if tokens[k] == "{":
            depth += 1
        elif tokens[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
    raise LatexError("unbalanced braces")


def _brace_argument(tokens: list[str], pos: int, out: list[str]) -> int:
    """Copy one argument starting at ``pos`` into ``out`` as a braced group; return the next index."""
    if pos >= len(tokens):
        raise LatexError(f"missing argument after {tokens[pos - 1] if pos else 'start'}")
    tok = tokens[pos]
    if tok == "{":
        end = _group_end(tokens, pos)
        out.extend(normalize_tokens(tokens[pos:end], _inner=True))
        return end
    if tok == "}" or tok in SCRIPTS:
        raise LatexError(f"missing argument before {tok!r}")
    if tok in ARITY:
        # e.g. "^\frac12": brace the whole command with its own arguments.
        inner: list[str] = []
        nxt = _copy_command(tokens, pos, inner)
        out.extend(["{", *inner, "}"])
        return nxt
    out.extend(["{", ALIASES.get(tok, tok), "}"])
    return pos + 1


def _copy_command(tokens: list[str], pos: int, out: list[str]) -> int:
    """Copy a command with arity at ``pos`` and its (braced) arguments into ``out``."""
    tok = tokens[pos]
    out.append(tok)
    k = pos + 1
    if tok == r"\sqrt" and k < len(tokens) and tokens[k] == "[":
        # optional root index: copy up to the matching "]"
        depth = 0
        while k < len(tokens):
            out.append(tokens[k])
            if tokens[k] == "[":
                depth += 1
            elif tokens[k] == "]":
                depth -= 1
                if depth == 0:
                    k += 1
                    break
            k += 1
    if tok in (r"\xrightarrow", r"\xleftarrow") and k < len(tokens) and tokens[k] == "[":
        while k < len(tokens) and tokens[k] != "]":
            out.append(tokens[k])
            k += 1
        if k < len(tokens):
            out.append(tokens[k])
            k += 1
    for _ in range(ARITY[tok]):
        if tok in TEXT_COMMANDS and k < len(tokens) and tokens[k] == "{":
            end = _group_end(tokens, k)
            out.extend(tokens[k:end])  # text mode: copy verbatim
            k = end
        else:
            k = _brace_argument(tokens, k, out)
    return k


def normalize_tokens(tokens: Sequence[str], _inner: bool = False) -> list[str]:
    """Canonical token list: aliases unified, single-token arguments braced."""
    tokens = [ALIASES.get(t, t) for t in tokens]
    out: list[str] = []
    k = 0
    while k < len(tokens):
        tok = tokens[k]
        if tok in SCRIPTS:
            out.append(tok)
            k = _brace_argument(tokens, k + 1, out)
        elif tok in ARITY:
            k = _copy_command(tokens, k, out)
        else:
            out.append(tok)
            k += 1
    return out


def normalize(latex: str) -> str:
    """Canonical space-separated token form of a formula; raises LatexError when it cannot be parsed."""
    text = latex.strip()
    if text.endswith("\\") and (len(text) - len(text.rstrip("\\"))) % 2:
        text += " "  # a trailing control space "\ ": stripping it left a lone backslash
    tokens = tokenize(text)
    if not tokens:
        raise LatexError("empty formula")
    return " ".join(normalize_tokens(tokens))


def to_latex(tokens: Iterable[str] | str) -> str:
    """Compact LaTeX for people (``\\frac{1}{2}``) from canonical tokens; compiles as the tokens do."""
    if isinstance(tokens, str):
        tokens = tokens.split()
    parts: list[str] = []
    prev = ""
    for tok in tokens:
        if prev and _is_control_word(prev) and (tok[0].isalpha() or tok == "*"):
            parts.append(" ")
        parts.append(tok)
        prev = tok
    return "".join(parts)


class Vocab:
    """Token <-> id mapping with ``<pad> <start> <end> <unk> [MASK]`` first; saved as JSON."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIAL_TOKENS)
        seen = set(self.itos)
        for t in tokens:
            if t not in seen:
                self.itos.append(t)
                seen.add(t)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    pad_id, start_id, end_id, unk_id, mask_id = 0, 1, 2, 3, 4

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str] | str], min_freq: int = 1) -> Vocab:
        """Vocabulary of every token seen at least ``min_freq`` times, most frequent first."""
        counts: Counter[str] = Counter()
        for toks in token_lists:
            counts.update(toks.split() if isinstance(toks, str) else toks)
        ordered = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ordered)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str] | str, add_special: bool = True) -> list[int]:
        """Ids of tokens (unknown ones -> ``<unk>``), framed by ``<start>``/``<end>``."""
        if isinstance(tokens, str):
            tokens = tokens.split()
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ids up to the first ``<end>``, without special tokens."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i < len(SPECIAL_TOKENS):
                continue
            out.append(self.itos[i])
        return out

    def unknown(self, tokens: Sequence[str]) -> list[str]:
        """Tokens not in the vocabulary."""
        return [t for t in tokens if t not in self.stoi]

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(
            json.dumps({"tokens": self.itos}, ensure_ascii=False, indent=0), encoding="utf-8"
        )

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        tokens = data["tokens"] if isinstance(data, dict) else data
        if list(tokens[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"{path}: vocabulary must start with {SPECIAL_TOKENS}")
        return cls(tokens[len(SPECIAL_TOKENS) :])
