"""New training formulas recombined from sub-expressions of real ones.

Real formulas are cut into their braced groups (script arguments, fraction parts, command arguments) and their
relation sides (``a + b`` in ``a + b = c``); a new formula is a real one with some groups swapped for groups of
the same role from other formulas, sometimes dressed in arXiv-style notation (``\\left( \\right)``, ``\\mathrm``,
``\\operatorname``, spacing, accents, matrices) that the exam-style ``cn_math`` corpus rarely has.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence

from texlens.latex import LatexError, normalize, to_latex

RELATIONS = frozenset(
    r"= < > \leq \geq \neq \approx \equiv \sim \simeq \in \subset \subseteq \rightarrow".split()
)
ACCENTS = (r"\hat", r"\tilde", r"\bar", r"\vec", r"\dot", r"\overline", r"\widehat")
FONTS = (r"\mathrm", r"\mathbf", r"\mathcal", r"\mathbb", r"\boldsymbol")
SPACES = (r"\,", r"\;", r"\quad", r"\qquad", r"\!", "~")
OPERATORS = ("sgn", "tr", "diag", "rank", "Res", "span", "erf", "Tr", "Im", "Re")
WORDS = ("if", "for", "and", "const", "otherwise", "where", "max", "min", "eff", "tot")
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


def synthesize(
    formulas: Sequence[str], n: int, seed: int = 0, max_tokens: int = 150, exclude: Iterable[str] = ()
) -> list[str]:
    """``n`` new canonical formulas recombined from canonical ``formulas``, none in ``exclude``."""
    rng = random.Random(seed)
    pool = SubexpressionPool(formulas)
    banned = set(exclude) | set(formulas)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and attempts < 20 * n:
        attempts += 1
        tokens = list(rng.choice(pool.formulas))
        r = rng.random()
        if r < 0.5:
            tokens = swap_groups(tokens, pool, rng, swaps=rng.randint(1, 3))
        if r > 0.3:
            tokens = dress(tokens, pool, rng)
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
