"""New training formulas recombined from sub-expressions of real ones.

Real formulas are cut into their braced groups (script arguments, fraction parts, command arguments) and their
relation sides (``a + b`` in ``a + b = c``); a new formula is a real one with some groups swapped for groups of
the same role from other formulas, sometimes dressed in arXiv-style notation (``\\left( \\right)``, ``\\mathrm``,
``\\operatorname``, spacing, accents, matrices) that the exam-style ``cn_math`` corpus rarely has.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

from texlens.latex import LatexError, normalize, to_latex

RELATIONS = frozenset(
    r"= < > \leq \geq \neq \approx \equiv \sim \simeq \in \subset \subseteq \rightarrow".split()
)
ACCENTS = (r"\hat", r"\tilde", r"\bar", r"\vec", r"\dot", r"\overline", r"\widehat")
FONTS = (r"\mathrm", r"\mathbf", r"\mathcal", r"\mathbb", r"\boldsymbol")
SPACES = (r"\,", r"\;", r"\quad", r"\qquad", r"\!", "~")
OPERATORS = ("sgn", "tr", "diag", "rank", "Res", "span", "erf", "Tr", "Im", "Re")
WORDS = ("if", "for", "and", "const", "otherwise", "where", "max", "min", "eff", "tot")
# Commands whose argument is upright text: words in formulas ("for", "unless", E_{kin}) are written in these.
WORD_COMMANDS = (r"\mathrm", r"\mathrm", r"\text")
# Made-up words are syllables of common English onsets, vowels and codas: letters to read one by one, not a
# word to guess from the few that formulas use (a model that only knows those reads "gravity" as "exp ity").
ONSETS = tuple("b c d f g h j k l m n p r s t v w z".split()) + tuple(
    "st tr pl gr ch sh th br cl fr sp qu".split()
)
VOWELS = tuple("a e i o u y ea ou io ai".split())
CODAS = ("", "", "", "n", "s", "t", "r", "l", "m", "ng", "ck", "nd", "st", "x")
FENCES = (("(", ")"), ("[", "]"), (r"\{", r"\}"), ("|", "|"), (r"\langle", r"\rangle"))
MATRICES = ("pmatrix", "bmatrix", "vmatrix", "matrix")


def _groups(tokens: Sequence[str]) -> list[tuple[int, int, str]]:
    """Every braced group as (start of content, end of content, role)."""
    out: list[tuple[int, int, str]] = []
    stack: list[tuple[int, str]] = []
    numerator_end = -1  # index of the "}" that closed a fraction's numerator
    for i, tok in enumerate(tokens):
        if tok == "{":
            prev = tokens[i - 1] if i else ""
            if prev in ("^", "_"):
                role = "script"
            elif prev in (r"\frac", r"\dfrac", r"\tfrac") or i - 1 == numerator_end:
                role = "frac"
            elif prev.startswith("\\"):
                role = "arg"
            else:
                role = "group"
            stack.append((i + 1, role if role != "frac" or i - 1 != numerator_end else "denominator"))
        elif tok == "}" and stack:
            start, role = stack.pop()
            if role == "frac":
                numerator_end = i
            if i > start:
                out.append((start, i, "frac" if role == "denominator" else role))
    return out


def _sides(tokens: Sequence[str]) -> list[list[str]]:
    """Top-level pieces between relation symbols."""
    sides, cur, depth = [], [], 0
    for tok in tokens:
        depth += tok == "{"
        depth -= tok == "}"
        if depth == 0 and tok in RELATIONS:
            if cur:
                sides.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        sides.append(cur)
    return sides


class SubexpressionPool:
    """Sub-expressions of real formulas by role, to recombine into new formulas."""

    def __init__(self, formulas: Iterable[str], max_len: int = 40):
        self.formulas: list[list[str]] = []
        self.by_role: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for f in formulas:
            tokens = f.split()
            if not tokens:
                continue
            self.formulas.append(tokens)
            for start, end, role in _groups(tokens):
                if end - start <= max_len:
                    self.by_role[role].append(tuple(tokens[start:end]))
            for side in _sides(tokens):
                if 0 < len(side) <= max_len and side.count("{") == side.count("}"):
                    self.by_role["side"].append(tuple(side))

    def piece(self, rng: random.Random, role: str = "side") -> list[str]:
        """A random sub-expression of the given role."""
        pool = self.by_role.get(role) or self.by_role["side"]
        return list(rng.choice(pool))


def swap_groups(tokens: list[str], pool: SubexpressionPool, rng: random.Random, swaps: int = 2) -> list[str]:
    """Replace up to ``swaps`` braced groups with same-role groups from other formulas."""
    out = list(tokens)
    for _ in range(swaps):
        groups = _groups(out)
        if not groups:
            break
        start, end, role = rng.choice(groups)
        out[start:end] = pool.piece(rng, role)
    return out


def dress(tokens: list[str], pool: SubexpressionPool, rng: random.Random) -> list[str]:
    """Wrap a formula or a piece of it in arXiv-style notation."""
    piece = pool.piece(rng, rng.choice(["side", "group", "script"]))
    kind = rng.randrange(8)
    if kind == 0:
        lo, hi = rng.choice(FENCES)
        new = [r"\left", lo, *piece, r"\right", hi]
    elif kind == 1:
        new = [rng.choice(ACCENTS), "{", *piece[:3], "}"]
    elif kind == 2:
        new = [rng.choice(FONTS), "{", *piece[:4], "}"]
    elif kind == 3:
        new = [r"\operatorname", "{", *rng.choice(OPERATORS), "}", "(", *piece, ")"]
    elif kind == 4:
        new = [
            rng.choice(SPACES[:4]),
            r"\mathrm",
            "{",
            *rng.choice(WORDS),
            "}",
            rng.choice(SPACES[:4]),
            *piece,
        ]
    elif kind == 5:
        env = rng.choice(MATRICES)
        rows = []
        for r in range(rng.randint(2, 3)):
            if r:
                rows.append(r"\\")
            cells = [pool.piece(rng, "script")[:6] for _ in range(rng.randint(2, 3))]
            for c, cell in enumerate(cells):
                rows += ([] if c == 0 else ["&"]) + cell
        new = [rf"\begin{{{env}}}", *rows, rf"\end{{{env}}}"]
    elif kind == 6:
        new = [r"\frac", "{", *pool.piece(rng, "frac"), "}", "{", *pool.piece(rng, "frac"), "}"]
    else:
        new = [*piece, rng.choice(SPACES), *pool.piece(rng, "side")]
    # Put the new piece beside the formula or in place of one of its sides.
    relation = rng.choice(["=", r"\leq", r"\approx", ",", r"\quad"])
    return [*tokens, relation, *new] if rng.random() < 0.5 else [*new, relation, *tokens]


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word of one to three syllables."""
    syllables = rng.choices((1, 2, 3), weights=(9, 8, 3))[0]
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def _arguments_of(tokens: Sequence[str], commands: Iterable[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of the content of every braced argument of one of ``commands`` in ``tokens``."""
    commands = frozenset(commands)
    for start, end, _ in _groups(tokens):
        if start >= 2 and tokens[start - 2] in commands:
            yield start, end


def text_words(tokens: Sequence[str]) -> list[str]:
    """Words of two or more letters in the upright-text arguments of canonical ``tokens``."""
    words: list[str] = []
    for start, end in _arguments_of(tokens, (*WORD_COMMANDS, r"\textrm", r"\operatorname")):
        letters = "".join(tokens[start:end]).replace("~", " ")
        words += [w for w in letters.split() if len(w) >= 2 and w.isascii() and w.isalpha()]
    return words


def word_piece(rng: random.Random, known: Sequence[str], max_words: int = 3) -> list[str]:
    """One to three words in an upright-text command, as canonical tokens (``\\mathrm { f o r ~ a l l }``): a
    third of them words real formulas use (``known``), the others made up; some capitalised or in capitals."""
    words = []
    for _ in range(min(max_words, rng.choice((1, 1, 1, 2, 2, 3)))):
        word = rng.choice(known) if known and rng.random() < 0.35 else pseudo_word(rng)
        r = rng.random()
        words.append(word.capitalize() if r < 0.15 else word.upper() if r < 0.22 and len(word) <= 5 else word)
    letters = list("~".join(words))
    if rng.random() < 0.2:
        letters = ["~", *letters, "~"]
    return [rng.choice(WORD_COMMANDS), "{", *letters, "}"]


def add_words(tokens: list[str], rng: random.Random, known: Sequence[str]) -> list[str]:
    """``tokens`` with words put where formulas have them: a label on a symbol's subscript or superscript
    (``E _ { \\mathrm { k i n } }``), a condition after the formula (``, \\quad \\mathrm { i f } x > 0``) or
    text before it."""
    kind = rng.randrange(3)
    if kind == 0:
        # A symbol with no script of its own, not itself a script, a command's argument or in a font command.
        in_font = {i for start, end in _arguments_of(tokens, _FONT_COMMANDS) for i in range(start, end)}
        spots = [
            i
            for i, tok in enumerate(tokens)
            if i not in in_font
            and (tok.isalpha() and len(tok) == 1 or tok.startswith("\\") and tok[1:] in _GREEK)
            and (i + 1 == len(tokens) or tokens[i + 1] not in ("_", "^"))
            and (i == 0 or tokens[i - 1] not in ("_", "^") and not tokens[i - 1].startswith("\\"))
            and (i < 2 or tokens[i - 1] != "{" or not tokens[i - 2].startswith("\\"))
        ]
        if spots:
            i = rng.choice(spots) + 1
            label = word_piece(rng, known, max_words=1)
            return [*tokens[:i], rng.choice(("_", "_", "^")), "{", *label, "}", *tokens[i:]]
    text = word_piece(rng, known)
    if kind <= 1:
        condition = [rng.choice((",", r"\quad", r"\qquad", "~", r"\;")), *text]
        sides = [side for side in _sides(tokens) if len(side) <= 12]
        if sides and rng.random() < 0.5:
            condition += rng.choice(sides)
        # Before the formula's closing punctuation, if it has one.
        end = len(tokens) - (bool(tokens) and tokens[-1] in (",", ".", ";"))
        return [*tokens[:end], *condition, *tokens[end:]]
    return [*text, rng.choice(SPACES[:4]), *tokens]


def _symbol_spots(tokens: Sequence[str]) -> list[int]:
    """Indices of the letters, digits and Greek letters of ``tokens`` that are plain math symbols: not in a font
    command's argument (``\\mathrm { d }``), a font switch's group (``{ \\bf p }``) or a length
    (``\\hspace { 0 . 3 i n }``), not a command's bare argument."""
    in_font = {
        i for start, end in _arguments_of(tokens, _FONT_COMMANDS | _NOT_MATH) for i in range(start, end)
    }
    # A group that starts with a font switch ({ \bf x y }, { \rm d }) is in that font to its end.
    in_font |= {
        i for start, end, _ in _groups(tokens) if tokens[start] in _FONT_SWITCHES for i in range(start, end)
    }
    return [
        i
        for i, tok in enumerate(tokens)
        if i not in in_font
        and (len(tok) == 1 and tok.isascii() and tok.isalnum() or tok.startswith("\\") and tok[1:] in _GREEK)
        and (i == 0 or not tokens[i - 1].startswith("\\") or tokens[i - 1] == r"\\")
    ]


def embolden(tokens: list[str], rng: random.Random, style: str = "im") -> list[str]:
    """``tokens`` with one or two of its symbols set in bold, as papers set vectors and sets: every occurrence of
    the symbol (most often) or one of them. ``style`` "im" writes IM2LATEX's ``{ \\bf x }`` mostly (and
    ``\\mathbf { x }``), "cn" cn_math's ``\\mathbf { x }`` and ``\\boldsymbol { x }``; Greek letters always take
    ``\\boldsymbol``, the only one of these commands that makes them bold. Unchanged if there is no symbol."""
    spots = _symbol_spots(tokens)
    if not spots:
        return tokens
    chosen: set[int] = set()
    for _ in range(1 + (rng.random() < 0.3)):
        symbol = tokens[rng.choice(spots)]
        same = [i for i in spots if tokens[i] == symbol]
        chosen.update(same if rng.random() < 0.6 else [rng.choice(same)])
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i not in chosen:
            out.append(tok)
            continue
        alone = 0 < i < len(tokens) - 1 and tokens[i - 1] == "{" and tokens[i + 1] == "}"
        if tok.startswith("\\"):
            bold = [r"\boldsymbol", "{", tok, "}"]
        elif style == "im" and rng.random() < 0.75:
            # Alone in a group, IM2LATEX mostly writes _ { \bf i }, not _ { { \bf i } }.
            bold = [r"\bf", tok] if alone and rng.random() < 0.7 else ["{", r"\bf", tok, "}"]
        else:
            bold = [
                rng.choice((r"\mathbf", r"\boldsymbol") if style == "cn" else (r"\mathbf",)),
                "{",
                tok,
                "}",
            ]
        # A bare script (x _ 1) takes its new argument in braces.
        out += ["{", *bold, "}"] if out and out[-1] in ("_", "^") and bold[0] != "{" else bold
    return out


_FONT_COMMANDS = frozenset(
    (*WORD_COMMANDS, *FONTS, *r"\textrm \operatorname \mathit \mathsf \mathtt \textbf \textit".split())
)
_FONT_SWITCHES = frozenset(r"\bf \rm \it \cal \sf \tt \mit \bm \boldmath".split())
_NOT_MATH = frozenset(
    r"\hspace \vspace \kern \hskip \raisebox \rule \label \mbox \hbox \color \begin{array} \begin{tabular}".split()
)
_GREEK = frozenset(
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau phi chi psi omega"
    " Gamma Delta Theta Lambda Xi Pi Sigma Phi Psi Omega".split()
)


def _collect(make: Callable[[], list[str]], n: int, max_tokens: int, banned: set[str]) -> list[str]:
    """Up to ``n`` distinct canonical formulas from calls of ``make`` (at most 20 calls per formula wanted), none in
    ``banned``, none longer than ``max_tokens`` or rejected by the tokeniser."""
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        tokens = make()
        if len(tokens) > max_tokens:
            continue
        try:
            canonical = normalize(to_latex(tokens))
        except LatexError:
            continue
        if canonical not in banned and canonical not in seen:
            seen.add(canonical)
            out.append(canonical)
    return out


def synthesize_words(
    formulas: Sequence[str], n: int, seed: int = 0, max_tokens: int = 150, exclude: Iterable[str] = ()
) -> list[str]:
    """``n`` new canonical formulas: canonical ``formulas`` with one or two pieces of upright text added (see
    ``add_words``), none in ``exclude``."""
    rng = random.Random(seed)
    bases = [f.split() for f in formulas if f.strip()]
    if not bases:
        return []
    known = sorted({w for tokens in bases for w in text_words(tokens)})

    def make() -> list[str]:
        tokens = list(rng.choice(bases))
        for _ in range(1 + (rng.random() < 0.25)):
            tokens = add_words(tokens, rng, known)
        return tokens

    return _collect(make, n, max_tokens, set(exclude) | set(formulas))


def synthesize_bold(
    formulas: Sequence[str],
    n: int,
    seed: int = 0,
    style: str = "im",
    max_tokens: int = 150,
    exclude: Iterable[str] = (),
) -> list[str]:
    """``n`` new canonical formulas: canonical ``formulas`` with symbols set in bold (see ``embolden``), none in
    ``exclude``."""
    rng = random.Random(seed)
    bases = [f.split() for f in formulas if f.strip()]
    if not bases:
        return []
    return _collect(
        lambda: embolden(list(rng.choice(bases)), rng, style), n, max_tokens, set(exclude) | set(formulas)
    )


def synthesize(
    formulas: Sequence[str], n: int, seed: int = 0, max_tokens: int = 150, exclude: Iterable[str] = ()
) -> list[str]:
    """``n`` new canonical formulas recombined from canonical ``formulas``, none in ``exclude``."""
    rng = random.Random(seed)
    pool = SubexpressionPool(formulas)

    def make() -> list[str]:
        tokens = list(rng.choice(pool.formulas))
        r = rng.random()
        if r < 0.5:
            tokens = swap_groups(tokens, pool, rng, swaps=rng.randint(1, 3))
        if r > 0.3:
            tokens = dress(tokens, pool, rng)
        return tokens

    return _collect(make, n, max_tokens, set(exclude) | set(formulas))
