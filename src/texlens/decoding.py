"""Decoding: greedy and beam search over a model's ``init_state`` / ``step`` (KV cache, never the prefix again),
with LaTeX syntax constraints applied to the logits at every step.

The constraint keeps a small parse state per hypothesis (open braces, ``\\left``, ``\\begin{env}``, commands waiting
for arguments) and allows only tokens after which the formula can still be closed within the remaining length,
so every finished hypothesis has balanced groups and ends with ``<end>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch

from texlens.latex import ARITY, SPECIAL_TOKENS

PAD_ID, START_ID, END_ID = 0, 1, 2

__all__ = [
    "Hypothesis",
    "LatexConstraint",
    "beam_search",
    "confidence",
    "greedy_decode",
]


@dataclass
class Hypothesis:
    """One decoded sequence: token ids (ending with ``<end>`` when it finished), its score and per-token details.

    ``score`` is the total log-probability divided by the length penalty (greedy: the total log-probability);
    ``token_logprobs`` are the model's own log-probabilities of the chosen tokens; ``attention`` is
    (len(ids), h, w): where the decoder looked for each token.
    """

    ids: list[int]
    score: float
    token_logprobs: list[float]
    attention: np.ndarray | None = None


def confidence(h: Hypothesis) -> float:
    """Geometric mean of the token probabilities, in [0, 1]."""
    if not h.token_logprobs:
        return 0.0
    return float(math.exp(sum(h.token_logprobs) / len(h.token_logprobs)))


# --------------------------------------------------------------------------------------------------------------
# Syntax constraints
# --------------------------------------------------------------------------------------------------------------

# Commands with mandatory arguments that the tokenizer's ARITY table leaves out (it lists only those it braces).
EXTRA_ARITY = {
    **dict.fromkeys(
        r"\color \fbox \phantom \hphantom \vphantom \smash \llap \rlap \mathop \mathbin \mathrel \mathord"
        r" \mathopen \mathclose \mathpunct \mathinner \substack \hspace \vspace \makebox \label \ref \tag"
        r" \bcancel \xcancel \ensuremath \mathds \mathbbm \big \Big \bigg \Bigg \bigl \bigr \Bigl \Bigr \biggl"
        r" \biggr \Biggl \Biggr \bigm \Bigm".split(),
        1,
    ),
    **dict.fromkeys(r"\textcolor \raisebox \setlength \sideset".split(), 2),
}
SCRIPT_TOKENS = ("^", "_", r"\sp", r"\sb")
# Commands whose one argument is a math field, as a script's is: TeX expands macros while looking for it.
FIELD_COMMANDS = (
    *SCRIPT_TOKENS,
    *r"\mathop \mathbin \mathrel \mathord \mathopen \mathclose \mathpunct \mathinner".split(),
)
# Commands a math field cannot take unbraced: their expansion (LaTeX + amsmath) starts with neither "{" nor a
# character or math character (`\cdots` is `\mathinner{...}`, `\sqrt` looks ahead for "[", `\bar` is a
# \mathaccent, `\sum` takes \limits), so `x_\cdots` is "Missing { inserted" while `x_{\cdots}` is fine. Found by
# rendering `x_\cmd y` and `x_{\cmd} y` for every command of the vocabulary; tests/test_decoding.py re-checks it.
NOT_A_FIELD = frozenset(
    r"""\AA \Longrightarrow \O \Perp \acute \arccos \arcsin \atop \bar \bf \bigcap \bigcup \bigodot \bigoplus
    \bigotimes \bigsqcup \bigvee \bigwedge \binom \bmod \boldmath \boldsymbol \breve \cal \cdots \check \colon
    \cong \cos \coprod \ddot \displaystyle \dot \doteq \dots \fbox \footnotesize \hat \hfill \hphantom \int \it
    \l \label \ldots \lg \lim \ln \log \longrightarrow \makebox \mathbin \max \min \mit \nonumber \notin \o
    \oint \operatorname \operatorname* \overbrace \overline \overrightarrow \phantom \prod \qquad \quad
    \scriptscriptstyle \scriptsize \scriptstyle \sf \sin \sl \small \smallskip \smash \sqrt \stackrel \sum \tan
    \textstyle \thicklines \tilde \tiny \tt \underbrace \underline \underset \vdots \vec \vphantom \widehat
    \widetilde""".split()
)
OPTIONAL_ARG = frozenset(
    (r"\sqrt", r"\xrightarrow", r"\xleftarrow")
)  # may take "[ ... ]" before the argument
SPEC_ENVS = frozenset(("array", "tabular", "subarray", "darray", "alignat", "alignedat"))  # need "{ cols }"
# What may stand in an environment's "{ cols }" argument: column letters, or a number of column pairs.
SPEC_TOKENS = {"alignat": "0123456789", "alignedat": "0123456789"}
COLUMN_LETTERS = ("l", "c", "r")
ARRAY_SPEC_TOKENS = (*COLUMN_LETTERS, "|")
MAX_SPEC = 24  # tokens in "{ cols }" (the real formulas have at most 17)
# Most "&" one row of an environment takes ("Extra alignment tab" beyond it); the rest take any number. An array
# takes one fewer than the column letters of its spec.
ROW_TABS = {
    **dict.fromkeys("matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix".split(), 9),  # MaxMatrixCols
    **dict.fromkeys("cases dcases rcases split".split(), 1),
    **dict.fromkeys("gather gathered multline picture".split(), 0),
    "eqnarray": 2,
}
UNLIMITED = 1_000_000
# `\hspace{ dimen }`: [-] digits [. digits] [true] unit, TeX's "Illegal unit of measure" otherwise. A small automaton
# over single-character tokens: phase -> [(characters, next phase)]; DIM_COST[phase] = fewest tokens to "}" included.
DIM_COMMANDS = (r"\hspace", r"\vspace", r"\hspace*", r"\vspace*")
DIM_UNITS = {"p": "tc", "c": "mc", "m": "m", "i": "n", "e": "mx", "b": "p", "d": "d", "s": "p"}
DIGITS = "0123456789"
DIM_START, DIM_SIGN, DIM_INT, DIM_DOT, DIM_FRAC, DIM_T, DIM_TR, DIM_TRU, DIM_TRUE, DIM_DONE = range(10)
DIM_UNIT = 10  # + index of the unit's first letter in DIM_UNITS
DIM_RULES: dict[int, list[tuple[str, int]]] = {
    DIM_START: [("-", DIM_SIGN), (DIGITS, DIM_INT), (".", DIM_DOT)],
    DIM_SIGN: [(DIGITS, DIM_INT), (".", DIM_DOT)],
    DIM_INT: [(DIGITS, DIM_INT), (".", DIM_FRAC), ("t", DIM_T)],
    DIM_DOT: [(DIGITS, DIM_FRAC)],
    DIM_FRAC: [(DIGITS, DIM_FRAC), ("t", DIM_T)],
    DIM_T: [("r", DIM_TR)],
    DIM_TR: [("u", DIM_TRU)],
    DIM_TRU: [("e", DIM_TRUE)],
    DIM_TRUE: [],
    DIM_DONE: [],
}
for _phase in (DIM_INT, DIM_FRAC, DIM_TRUE):
    DIM_RULES[_phase] += [(first, DIM_UNIT + k) for k, first in enumerate(DIM_UNITS)]
for _k, _second in enumerate(DIM_UNITS.values()):
    DIM_RULES[DIM_UNIT + _k] = [(_second, DIM_DONE)]
DIM_COST = {phase: 1 if phase == DIM_DONE else UNLIMITED for phase in DIM_RULES}  # shortest path to "}"
for _ in DIM_RULES:
    for _phase, _rules in DIM_RULES.items():
        DIM_COST[_phase] = min([DIM_COST[_phase], *(1 + DIM_COST[nxt] for _, nxt in _rules)])
# The most one token adds to the closing cost: \hspace, whose "{ 1 p t }" replaces one argument. Larger slacks
# allow the same moves.
MAX_DELTA = DIM_COST[DIM_START] + 1
DELIMITERS = frozenset(
    r"( ) [ ] \{ \} | \| . / < > \langle \rangle \lfloor \rfloor \lceil \rceil \vert \Vert \lvert \rvert"
    r" \lVert \rVert \uparrow \downarrow \updownarrow \Uparrow \Downarrow \Updownarrow \backslash \lbrace"
    r" \rbrace \lbrack \rbrack \lgroup \rgroup \lmoustache \rmoustache".split()
)

# Token kinds.
ATOM, SEP, OPEN, CLOSE, SCRIPT, CMD1, CMD2, CMD3, OPT1 = range(9)
LEFT, RIGHT, LEFT_DELIM, RIGHT_DELIM, BEGIN, BEGIN_SPEC, END, LBRACK, RBRACK, EOS, FORBIDDEN = range(9, 20)
DIMEN = 20  # \hspace and \vspace when the vocabulary can spell their dimension
N_KINDS = 21
CMDS = {1: CMD1, 2: CMD2, 3: CMD3}
IN_OPTIONAL_BANNED = (LBRACK, LEFT, LEFT_DELIM, BEGIN, BEGIN_SPEC)
SUP, SUB = 1, 2  # ParseState.scripts bits
FIELD_ARG = -1  # ParseState.need entry of a command that reads one math field (a script, \mathbin, ...)
SCRIPT_BITS = {"^": SUP, r"\sp": SUP, "_": SUB, r"\sb": SUB}


class ParseState(NamedTuple):
    """Parse state of one hypothesis; immutable, so beams can share it.

    ``frames``: open groups, innermost last, each ``(kind, need saved outside, id of the closing token, scripts
    saved outside, extra)`` with kind ``"{"``, ``"left"``, ``"env"``, ``"spec"`` (an environment's
    ``{ cols }``), ``"dim"`` (``\\hspace``'s dimension, ``extra`` its ``DIM_RULES`` phase) or ``"["``; ``extra`` is ``(tabs allowed per row, tabs in this row)`` for ``"env"``, ``(tokens,
    column letters)`` so far for ``"spec"``, else 0; ``need``: arguments still owed by the
    commands waiting at this level (innermost last; ``FIELD_ARG`` for the one math field of a script or
    ``\\mathbin``-like command); ``expect``: ``"left"``/``"right"`` when a delimiter must
    follow, ``"spec"`` when an environment's ``{`` must, ``"dim"`` after ``\\hspace`` (``*`` or ``{`` next) and
    ``"dim{"`` after ``\\hspace *``; ``opt``: just after ``\\sqrt``; ``recent``: the last tokens (loop check); ``cost``: fewest tokens that
    close everything, ``<end>`` included; ``scripts``: the scripts the current base already has at this level
    (``SUP`` | ``SUB`` bits), since a second superscript or subscript is a TeX error ("Double superscript");
    ``loop``: the token that would continue a decoding loop at the end of ``recent`` (None: no loop), found once
    per state; ``looped``: a loop was cut on the way here, so only moves that close the formula are left.
    """

    frames: tuple
    need: tuple
    expect: str | None
    opt: bool
    recent: tuple
    cost: int
    scripts: int = 0
    loop: int | None = None
    looped: bool = False


def _need_cost(need: tuple) -> int:
    """Fewest tokens that complete every waiting command (an inner command is itself the outer's argument)."""
    return abs(need[-1]) + sum(abs(n) - 1 for n in need[:-1]) if need else 0


def _after_atom(need: tuple) -> int:
    """Cost of ``need`` once one more complete argument has been given at this level."""
    return _need_cost(need) - 1 if need else 0


def _atom_done(need: tuple) -> tuple:
    """``need`` after one complete argument (a command whose arguments are complete is one argument, too)."""
    while need:
        last = need[-1] - 1
        need = need[:-1]
        if last > 0:
            return (*need, last)
    return need


def _state(
    frames: tuple,
    need: tuple,
    expect: str | None,
    opt: bool,
    recent: tuple,
    scripts: int = 0,
    loop: int | None = None,
    looped: bool = False,
) -> ParseState:
    cost = 1  # <end>
    if expect == "left":
        cost += 3 + _after_atom(need)  # delimiter, \right, delimiter
    elif expect == "right":
        cost += 1 + _after_atom(need)
    elif expect == "spec":
        cost += 3  # "{", a column, "}"
    elif expect in ("dim", "dim{"):
        cost += 4 + _need_cost(need)  # "{ 1 p t }" instead of the one argument need counts
    else:
        cost += _need_cost(need)
    for kind, saved, _, _, extra in frames:
        if kind == "[":
            cost += 1 + _need_cost(saved)  # "]" and then the command's argument
        elif kind == "spec":
            cost += 1 + (extra[0] == 0)  # a column if none yet, and "}"
        elif kind == "dim":
            cost += DIM_COST[extra] + _after_atom(saved)
        else:
            cost += (2 if kind == "left" else 1) + _after_atom(saved)
    return ParseState(frames, need, expect, opt, recent, cost, scripts, loop, looped)


class LatexConstraint:
    """Masks tokens that would make a hypothesis unparseable or unclosable within the length budget.

    Rules: ``}`` only when a brace is open; ``<end>`` only when every group is closed and no command waits for an
    argument; an argument starts with ``{`` or is one token (never ``}``, ``^``, ``&``, ``<end>``); ``\\right``
    only inside ``\\left``; ``\\end{X}`` only for the innermost ``\\begin{X}``; when the remaining budget just
    suffices to close everything, only closing moves are left; a block of up to ``max_period`` tokens that has
    repeated ``min_repeats`` times in a row over ``loop_span`` tokens may not go on (a decoding loop), and once
    one has been cut, only closing moves are left.

    ``loop_span=64`` accepts every formula of the IM2LATEX-100K validation set (up to 59 ``~`` or 14 ``{ 0 } &``
    in a row); "3 repeats of a 4-gram" alone would reject 0.25 % of them.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        max_period: int = 12,
        min_repeats: int = 3,
        loop_span: int = 64,
    ):
        self.tokens = list(tokens)
        self.max_period, self.min_repeats, self.loop_span = max_period, min_repeats, loop_span
        self.history = max(loop_span, min_repeats * max_period)
        index = {t: i for i, t in enumerate(self.tokens)}
        kinds = np.full(len(self.tokens), ATOM, dtype=np.int64)
        self.arity = np.zeros(len(self.tokens), dtype=np.int64)
        self.end_of = np.full(len(self.tokens), -1, dtype=np.int64)  # \begin{X} -> id of \end{X}
        delim = np.zeros(len(self.tokens), dtype=bool)
        for i, tok in enumerate(self.tokens):
            kinds[i] = self._kind(tok, index)
            self.arity[i] = ARITY.get(tok, EXTRA_ARITY.get(tok, 1 if tok in SCRIPT_TOKENS else 0))
            if kinds[i] in (BEGIN, BEGIN_SPEC):
                self.end_of[i] = index[r"\end" + tok[len(r"\begin") :]]
            delim[i] = tok in DELIMITERS
        self.has_rbrack = "]" in index
        self.has_delim = bool(delim.any())
        if not self.has_delim:  # \left with nothing to follow it could never close
            kinds[(kinds == LEFT) | (kinds == RIGHT)] = FORBIDDEN
        # Dimensions are checked when the vocabulary can spell every one of them.
        letters = set(DIGITS + "-.true" + "".join(DIM_UNITS) + "".join(DIM_UNITS.values()))
        spelled = letters <= index.keys()
        if spelled:
            kinds[[index[t] for t in DIM_COMMANDS if t in index]] = DIMEN
        self.dim_next = {  # phase -> {token: next phase}
            phase: {index[c]: nxt for chars, nxt in rules for c in chars}
            for phase, rules in (DIM_RULES.items() if spelled else ())
        }
        self.star = index.get("*", -1)
        self.kinds = kinds.tolist()
        self.kind_masks = np.stack([kinds == k for k in range(N_KINDS)])  # (N_KINDS, V)
        # A base takes one superscript and one subscript; a prime is a superscript too ("x^{2}'" is an error).
        self.script_bit = {index[t]: bit for t, bit in SCRIPT_BITS.items() if t in index}
        self.prime = index.get("'", -1)
        self.sup_ids = [i for i, bit in self.script_bit.items() if bit == SUP] + (
            [self.prime] if self.prime >= 0 else []
        )
        self.sub_ids = [i for i, bit in self.script_bit.items() if bit == SUB]
        # Environments: "&" per row, and what their "{ cols }" may hold (keyed by the id of the \end token).
        self.amp, self.open_id = index.get("&", -1), index.get("{", -1)
        self.row_tabs, self.spec_ids, self.column_envs = {}, {}, set()
        for tok in self.tokens:
            if tok.startswith(r"\end{"):
                env = tok[len(r"\end{") : -1]
                self.row_tabs[index[tok]] = ROW_TABS.get(env, UNLIMITED)
                if env in SPEC_ENVS:
                    spec = SPEC_TOKENS.get(env, ARRAY_SPEC_TOKENS)
                    self.spec_ids[index[tok]] = np.array([index[t] for t in spec if t in index])
                    if env not in SPEC_TOKENS:
                        self.column_envs.add(index[tok])
        self.column_ids = frozenset(index[t] for t in COLUMN_LETTERS if t in index)
        self.field_ids = frozenset(index[t] for t in FIELD_COMMANDS if t in index)
        self.not_field_ids = np.array(sorted(index[t] for t in NOT_A_FIELD if t in index), dtype=np.int64)
        self.delim_mask = delim
        self._masks: dict[tuple, np.ndarray] = {}  # numpy, not torch: a decoding step reads one per row

    @staticmethod
    def _kind(tok: str, index: dict[str, int]) -> int:
        if tok in SPECIAL_TOKENS:
            return EOS if tok == "<end>" else FORBIDDEN  # <unk> too: it would vanish from the LaTeX
        simple = {"{": OPEN, "}": CLOSE, "&": SEP, "\\\\": SEP, r"\left": LEFT, r"\right": RIGHT}
        simple.update({"[": LBRACK, "]": RBRACK})
        if tok in simple:
            return simple[tok]
        if tok in SCRIPT_TOKENS:
            return SCRIPT
        if tok.startswith(r"\begin{"):
            env = tok[len(r"\begin{") : -1]
            if r"\end" + tok[len(r"\begin") :] not in index:
                return FORBIDDEN  # could never be closed
            return BEGIN_SPEC if env in SPEC_ENVS else BEGIN
        if tok.startswith(r"\end{"):
            return END
        # IM2LATEX-style fused tokens such as "\left(" or "\right\}".
        for prefix, kind in ((r"\left", LEFT_DELIM), (r"\right", RIGHT_DELIM)):
            if tok.startswith(prefix) and len(tok) > len(prefix) and not tok[len(prefix)].isalpha():
                return kind
        if tok in OPTIONAL_ARG:
            return OPT1
        arity = ARITY.get(tok, EXTRA_ARITY.get(tok, 0))
        return CMDS.get(arity, ATOM)

    def initial(self) -> ParseState:
        """State before the first token."""
        return _state((), (), None, False, ())

    def advance(self, s: ParseState, token: int) -> ParseState:
        """State after ``token``."""
        kind = self.kinds[token]
        frames, need, expect, opt = s.frames, s.need, None, False
        recent = (*s.recent[1 - self.history :], token)
        top = frames[-1][0] if frames else None
        # Scripts of the current base: a token at this level (no argument owed) starts a new base, except a
        # script (which adds its bit) and a prime; inside an argument they stay; a group restores its outside.
        scripts = s.scripts if s.need or token == self.prime else 0
        if not s.need and s.expect is None and token in self.script_bit:
            scripts = s.scripts | self.script_bit[token]
        if s.expect == "spec":
            frames = (*frames, ("spec", (), -1, 0, (0, 0)))
        elif s.expect == "dim" and token == self.star:  # \hspace * { ... }
            expect = "dim{"
        elif s.expect in ("dim", "dim{"):  # the "{" of \hspace's dimension
            frames, need, scripts = (*frames, ("dim", need, -1, s.scripts, DIM_START)), (), 0
        elif top == "dim" and kind != CLOSE:
            frames = (*frames[:-1], (*frames[-1][:4], self.dim_next[frames[-1][4]][token]))
        elif top == "spec" and kind != CLOSE:
            count, columns = frames[-1][4]
            frames = (*frames[:-1], (*frames[-1][:4], (count + 1, columns + (token in self.column_ids))))
        elif s.expect == "left":
            frames, need, scripts = (*frames, ("left", need, -1, s.scripts, 0)), (), 0
        elif s.expect == "right":
            need, scripts = _atom_done(need), s.scripts
        elif kind == OPEN:
            frames, need, scripts = (*frames, ("{", need, -1, s.scripts, 0)), (), 0
        elif kind == CLOSE and top == "spec":  # the columns are known: an array row takes one "&" fewer
            columns = frames[-1][4][1]
            env = frames[-2]
            tabs = max(columns - 1, 0) if env[2] in self.column_envs else UNLIMITED
            frames = (*frames[:-2], (*env[:4], (min(tabs, env[4][0]), 0)))
        elif kind in (CLOSE, END, RIGHT_DELIM) and frames:
            _, saved, _, saved_scripts, _ = frames[-1]
            need, scripts = _atom_done(saved), saved_scripts if saved else 0
            frames = frames[:-1]
        elif kind == RIGHT and frames:
            _, saved, _, saved_scripts, _ = frames[-1]
            need, frames, expect, scripts = saved, frames[:-1], "right", saved_scripts if saved else 0
        elif kind == LEFT:
            expect = "left"
        elif kind == LEFT_DELIM:
            frames, need, scripts = (*frames, ("left", need, -1, s.scripts, 0)), (), 0
        elif kind in (SCRIPT, CMD1, CMD2, CMD3, OPT1, DIMEN):
            need, opt = (
                (*need, FIELD_ARG if token in self.field_ids else int(self.arity[token]) or 1),
                kind == OPT1,
            )
            expect = "dim" if kind == DIMEN else None
        elif kind in (BEGIN, BEGIN_SPEC):
            end = int(self.end_of[token])
            frames = (*frames, ("env", need, end, s.scripts, (self.row_tabs.get(end, UNLIMITED), 0)))
            need, scripts, expect = (), 0, ("spec" if kind == BEGIN_SPEC else None)
        elif kind == LBRACK and s.opt and self.has_rbrack:
            frames, need, scripts = (*frames, ("[", need, -1, s.scripts, 0)), (), 0
        elif kind == RBRACK and top == "[":
            need, scripts = frames[-1][1], frames[-1][3]
            frames = frames[:-1]
        elif kind == SEP and top == "env":  # count the row's "&"; a new row starts afresh
            tabs, used = frames[-1][4]
            frames = (*frames[:-1], (*frames[-1][:4], (tabs, used + 1 if token == self.amp else 0)))
        else:  # ATOM, plain brackets
            need = _atom_done(need)
        # A hypothesis whose loop was cut has lost its place in the image: it closes what is open and ends,
        # instead of escaping the loop by one token and starting it again until the length budget is spent.
        looped = s.looped or s.loop is not None
        return _state(frames, need, expect, opt, recent, scripts, self._repeated(recent), looped)

    def _mask_for(self, s: ParseState, slack: int) -> np.ndarray:
        """Allowed tokens (V,) for state ``s`` when a move may add at most ``slack`` to the closing cost."""
        top, end_id = (s.frames[-1][0], s.frames[-1][2]) if s.frames else (None, -1)
        arg = bool(s.need)
        field = arg and s.need[-1] == FIELD_ARG  # the argument is a math field (a script's, \mathbin's, ...)
        in_optional = any(f[0] == "[" for f in s.frames)
        scripts = 0 if arg or s.expect is not None else s.scripts
        if top == "env":
            tabs, used = s.frames[-1][4]
            extra: object = used >= tabs
        elif top == "spec":
            count = s.frames[-1][4][0]
            extra = (s.frames[-2][2], min(count, 2), count >= MAX_SPEC)
        elif top == "dim":
            extra = s.frames[-1][4]
        else:
            extra = None
        key = (arg and s.need[-1], s.expect, top, end_id, s.opt, slack, in_optional, scripts, extra)
        mask = self._masks.get(key)
        if mask is not None:
            return mask
        if s.expect in ("spec", "dim", "dim{"):
            mask = np.zeros(len(self.tokens), dtype=bool)
            mask[self.open_id] = True
            if s.expect == "dim" and self.star >= 0 and slack >= 0:  # "*" leaves the cost as it is
                mask[self.star] = True
        elif top == "dim":  # the next character of the dimension, then "}"
            mask = np.zeros(len(self.tokens), dtype=bool)
            phase = s.frames[-1][4]
            for token, nxt in self.dim_next[phase].items():
                mask[token] = DIM_COST[nxt] - DIM_COST[phase] <= slack
            if phase == DIM_DONE:
                mask[self.kind_masks[CLOSE]] = True
        elif top == "spec":  # column letters (at most MAX_SPEC), then "}"
            mask = np.zeros(len(self.tokens), dtype=bool)
            count = s.frames[-1][4][0]
            if count < MAX_SPEC and slack >= (-1 if count == 0 else 0):
                mask[self.spec_ids[s.frames[-2][2]]] = True
            if count > 0:
                mask[self.kind_masks[CLOSE]] = True
        elif s.expect is not None:
            mask = self.delim_mask.copy()  # a delimiter always lowers the cost
        else:
            # (kind, change of the closing cost); a kind is allowed when the change fits the slack
            if arg:
                # A macro's unbraced argument is one symbol: a command there takes the macro's closing brace as
                # its own argument (`\frac{a}\sqrt{b}`: "Missing { inserted"). A script (or \mathbin and the
                # like) reads a math field, where TeX expands macros first, so `x^\frac12` and `x^\mathrm{T}`
                # are fine; `x^\left(` is not.
                moves = [(ATOM, -1), (OPEN, 0), (LBRACK, 1 if s.opt and self.has_rbrack else -1)]
                if field:
                    moves += [(CMD1, 0), (CMD2, 1), (CMD3, 2), (OPT1, 0)]
                if top != "[":
                    moves.append((RBRACK, -1))
            else:
                moves = [(ATOM, 0), (OPEN, 1), (SCRIPT, 1), (CMD1, 1), (CMD2, 2), (CMD3, 3)]
                moves += [(OPT1, 1), (LEFT, 3), (LEFT_DELIM, 2), (BEGIN, 1), (BEGIN_SPEC, 4), (LBRACK, 0)]
                moves.append((DIMEN, MAX_DELTA))  # never an unbraced argument: \hskip is no math field
                moves.append((RBRACK, -1 if top == "[" else 0))
                if top == "{":
                    moves.append((CLOSE, -1))
                elif top == "left":
                    moves += [(RIGHT, -1), (RIGHT_DELIM, -2)]
                elif top is None:
                    moves.append((EOS, -1))
                elif top == "env":  # "&" and "\\\\" only directly in an alignment, not inside a group
                    moves.append((SEP, 0))
            # TeX ends an optional argument at its first "]" outside braces; to read it the same way everywhere,
            # no other bracket, \left or environment may appear inside one.
            banned = ()
            if in_optional:
                banned = IN_OPTIONAL_BANNED if top == "[" else (*IN_OPTIONAL_BANNED, RBRACK)
            kinds = [k for k, delta in moves if delta <= slack and k not in banned]
            mask = self.kind_masks[kinds].any(0)
            if top == "env" and not arg:
                mask[end_id] = True
                if extra and self.amp >= 0:  # this row has all the "&" the environment takes
                    mask[self.amp] = False
            if field:  # ... but not a command TeX cannot start a field with
                mask[self.not_field_ids] = False
            if scripts & SUP:
                mask[self.sup_ids] = False
            if scripts & SUB:
                mask[self.sub_ids] = False
        mask.flags.writeable = False  # shared by every hypothesis in this parse state
        self._masks[key] = mask
        return mask

    def first_rejected(self, ids: Sequence[int], max_len: int | None = None) -> int | None:
        """Index of the first token of ``ids`` this constraint would forbid (with ``max_len`` tokens allowed in
        all, by default exactly ``len(ids)``: no length to spare), or None when it allows all of them."""
        max_len = len(ids) if max_len is None else max_len
        state = self.initial()
        for i, token in enumerate(ids):
            if not self.mask([state], max_len - i)[0, token]:
                return i
            state = self.advance(state, token)
        return None

    def _repeated(self, recent: tuple) -> int | None:
        """The token that would continue a decoding loop at the end of ``recent`` (shortest period first)."""
        n = len(recent)
        shortest = max(self.loop_span, self.min_repeats)  # the span of period 1
        # Checked first, as this runs for every hypothesis at every step: a stretch with period p has at most p
        # distinct tokens.
        if n < shortest or len(set(recent[n - shortest :])) > self.max_period:
            return None
        for p in range(1, self.max_period + 1):
            span = max(self.loop_span, self.min_repeats * p)
            if n < span or recent[-1] != recent[-1 - p]:
                continue
            if recent[n - span + p :] == recent[n - span : n - p]:  # the last ``span`` tokens have period p
                return recent[-p]
        return None

    def mask(self, states: Sequence[ParseState], remaining: int) -> np.ndarray:
        """Allowed tokens (N, V), a read-only boolean array, for N hypotheses with ``remaining`` tokens left
        (``<end>`` included)."""
        rows = [
            self._mask_for(s, -1 if s.looped else max(-1, min(MAX_DELTA, remaining - 1 - s.cost)))
            for s in states
        ]
        for i, s in enumerate(states):
            banned = s.loop
            if banned is not None and rows[i][banned] and rows[i].sum() > 1:
                rows[i] = rows[i].copy()
                rows[i][banned] = False
        return rows[0][None] if len(rows) == 1 else np.stack(rows)


@lru_cache(maxsize=8)
def _constraint_for(tokens: tuple[str, ...]) -> LatexConstraint:
    return LatexConstraint(tokens)


def _resolve_constraint(
    constraints: bool | LatexConstraint, vocab: object | Sequence[str] | None
) -> LatexConstraint | None:
    if isinstance(constraints, LatexConstraint):
        return constraints
    if not constraints:
        return None
    if vocab is None:
        raise ValueError("syntax constraints need the vocabulary: pass vocab=... (or constraints=False)")
    tokens = getattr(vocab, "itos", vocab)
    return _constraint_for(tuple(tokens))


# --------------------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------------------


def _length_penalty(length: int, alpha: float | str) -> float:
    """GNMT length penalty ((5 + L) / 6) ** alpha, or L for ``"mean"`` (mean log-probability)."""
    if alpha == "mean":
        return float(max(length, 1))
    return ((5.0 + length) / 6.0) ** float(alpha)


def _attention_maps(att: list[torch.Tensor], shape: tuple[int, int]) -> np.ndarray:
    return torch.stack(att).float().reshape(len(att), *shape).numpy()


class ViewEnsemble:
    """A model whose every step averages the log-probabilities of one image read in several views.

    ``encode`` takes the first view's batch; the other views' batches (the same images in the same order, each
    view at its own size) are given here. Attention is the first view's. Decodes with ``greedy_decode`` and
    ``beam_search`` like the model itself, at the cost of one decoding per view.
    """

    def __init__(self, model: Any, others: Sequence[torch.Tensor]):
        self.model, self.others = model, list(others)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.model.encode(images)] + [self.model.encode(o) for o in self.others]

    def init_state(self, memories: list[torch.Tensor]) -> list:
        return [self.model.init_state(m) for m in memories]

    def step(self, tokens: torch.Tensor, states: list) -> tuple[torch.Tensor, list, torch.Tensor]:
        out = [self.model.step(tokens, s) for s in states]
        logp = torch.stack([o[0].float().log_softmax(-1) for o in out]).mean(0)
        return logp, [o[1] for o in out], out[0][2]

    def reorder_state(self, states: list, index: torch.Tensor, images: torch.Tensor | None = None) -> list:
        return [self.model.reorder_state(s, index, images=images) for s in states]

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        return self.model.feature_shape(height, width)


@torch.inference_mode()
def greedy_decode(
    model: torch.nn.Module,
    images: torch.Tensor,
    max_len: int = 256,
    constraints: bool | LatexConstraint = True,
    vocab: object | Sequence[str] | None = None,
    return_attention: bool = True,
) -> list[Hypothesis]:
    """Most likely token at each step, for a batch of images (B, 1, H, W); one hypothesis per image."""
    constraint = _resolve_constraint(constraints, vocab)
    feature_shape = model.feature_shape(*images.shape[-2:])
    b = images.shape[0]
    state = model.init_state(model.encode(images))
    tokens = torch.full((b,), START_ID, dtype=torch.long, device=images.device)
    rows = list(range(b))  # image of each active row
    parse = [constraint.initial()] * b if constraint else []
    ids: list[list[int]] = [[] for _ in range(b)]
    lps: list[list[float]] = [[] for _ in range(b)]
    atts: list[list[torch.Tensor]] = [[] for _ in range(b)]
    for t in range(max_len):
        logits, state, att = model.step(tokens, state)
        # The choice is made in numpy: on a few hundred logits per row, per-call overhead is what costs, and
        # numpy's is lower than torch's. argmax of the allowed logits is argmax of their log-probabilities, and
        # only the chosen token's log-probability is needed: logit - logsumexp.
        x = logits.detach().float().cpu().numpy()
        scores = np.where(constraint.mask(parse, max_len - t), x, -np.inf) if constraint else x
        best = scores.argmax(-1)
        top = x.max(-1)
        best_lp = (x[np.arange(len(rows)), best] - top - np.log(np.exp(x - top[:, None]).sum(-1))).tolist()
        best_ids = best.tolist()
        att_cpu = att.float().cpu() if return_attention else None
        keep = []
        for r, img in enumerate(rows):
            ids[img].append(best_ids[r])
            lps[img].append(best_lp[r])
            if att_cpu is not None:
                atts[img].append(att_cpu[r])
            if best_ids[r] != END_ID:
                keep.append(r)
        if not keep:
            break
        if len(keep) < len(rows):  # drop finished rows from the batch
            keep_t = torch.tensor(keep, device=images.device)
            state = model.reorder_state(state, keep_t, images=keep_t)  # one row per image
            best_ids = [best_ids[r] for r in keep]
            rows = [rows[r] for r in keep]
            if constraint:
                parse = [parse[r] for r in keep]
        if constraint:
            parse = [constraint.advance(s, tok) for s, tok in zip(parse, best_ids, strict=True)]
        tokens = torch.from_numpy(np.asarray(best_ids, dtype=np.int64)).to(images.device)
    return [
        Hypothesis(
            ids[i], float(sum(lps[i])), lps[i], _attention_maps(atts[i], feature_shape) if atts[i] else None
        )
        for i in range(b)
    ]


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module,
    images: torch.Tensor,
    beam: int = 5,
    max_len: int = 256,
    length_penalty: float | str = 1.0,
    constraints: bool | LatexConstraint = True,
    vocab: object | Sequence[str] | None = None,
    n_best: int | None = None,
    return_attention: bool = True,
) -> list[list[Hypothesis]]:
    """Beam search for a batch of images; per image the ``n_best`` (default ``beam``) hypotheses, best first.

    ``length_penalty`` is GNMT's alpha (0 = raw log-probability) or ``"mean"`` (mean token log-probability).
    """
    constraint = _resolve_constraint(constraints, vocab)
    feature_shape = model.feature_shape(*images.shape[-2:])
    device = images.device
    b, k = images.shape[0], beam
    # One copy of each image's memory (and what depends on it alone) for its k beams: the k rows of an image
    # attend to it together (see ``ImageToLatex.step``); only what a step changes has a row per beam.
    state = model.init_state(model.encode(images))
    state = model.reorder_state(state, torch.arange(b, device=device).repeat_interleave(k))
    tokens = torch.full((b * k,), START_ID, dtype=torch.long, device=device)
    cum = torch.full((b, k), float("-inf"), device=device)
    cum[:, 0] = 0.0  # the k beams of an image start identical: expand only the first
    active = list(range(b))  # images still searching; rows a*k .. a*k+k-1 of the batch belong to active[a]
    parse = [constraint.initial()] * (b * k) if constraint else []
    # back[t][row]: (row in the batch of step t-1, token, log-prob) that made row of step t; atts[t]: (rows, S).
    back: list[list[tuple[int, int, float]]] = [[]]
    atts: list[torch.Tensor | None] = []
    # Candidates that ended (or ran out of length): (score, step, parent row, token, log-prob).
    finished: list[list[tuple[float, int, int, int, float]]] = [[] for _ in range(b)]
    for t in range(max_len):
        logits, state, att = model.step(tokens, state)
        atts.append(att.float().cpu() if return_attention else None)
        logp = logits.float().log_softmax(-1)
        scores = logp
        if constraint:
            allowed = torch.tensor(constraint.mask(parse, max_len - t), device=device)
            scores = logp.masked_fill(~allowed, float("-inf"))
        v = scores.shape[-1]
        total = (cum.view(-1, 1) + scores).view(len(active), k * v)
        top_scores, top_idx = total.topk(min(2 * k, k * v), dim=1)
        top_lp = logp.view(len(active), k * v).gather(1, top_idx).tolist()
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        penalty = _length_penalty(t + 1, length_penalty)
        last = t == max_len - 1
        rows: list[tuple[int, int, float]] = []  # the next batch: (parent row, token, log-prob)
        next_cum: list[list[float]] = []
        still: list[int] = []
        for a, img in enumerate(active):
            alive: list[tuple[int, int, float, float]] = []
            for j in range(len(top_idx[a])):
                score = top_scores[a][j]
                if score == float("-inf"):
                    break
                parent, token = a * k + top_idx[a][j] // v, top_idx[a][j] % v
                if token == END_ID:
                    if j < k:  # an <end> below the top k is no contender
                        finished[img].append((score / penalty, t, parent, token, top_lp[a][j]))
                    continue
                alive.append((parent, token, top_lp[a][j], score))
                if len(alive) == k:
                    break
            done = not alive
            if alive and len(finished[img]) >= k:
                kth_best = sorted((f[0] for f in finished[img]), reverse=True)[k - 1]
                done = alive[0][3] / penalty < kth_best
            if alive and last:  # out of length: the live beams become unfinished hypotheses
                finished[img] += [(s / penalty, t, p, tok, lp) for p, tok, lp, s in alive]
            if done or last:
                continue
            # Keep k rows per image; padding copies carry -inf and never win.
            padded = alive + [(*alive[0][:3], float("-inf"))] * (k - len(alive))
            rows += [(p, tok, lp) for p, tok, lp, _ in padded]
            next_cum.append([s for *_, s in padded])
            still.append(img)
        if not still:
            break
        parents = [p for p, _, _ in rows]
        if len(still) < len(active):  # images finished: drop their rows and their memory
            position = {img: a for a, img in enumerate(active)}
            kept = torch.tensor([position[img] for img in still], device=device)
            state = model.reorder_state(state, torch.tensor(parents, device=device), images=kept)
        elif parents != list(range(len(parents))):  # else every beam extends itself: nothing to move
            state = model.reorder_state(state, torch.tensor(parents, device=device))
        tokens = torch.tensor([tok for _, tok, _ in rows], device=device)
        if constraint:
            parse = [constraint.advance(parse[p], tok) for p, tok, _ in rows]
        cum = torch.tensor(next_cum, device=device)
        back.append(rows)
        active = still
    return [
        [
            _trace(f, back, atts, feature_shape)
            for f in sorted(finished[i], key=lambda f: -f[0])[: n_best or k]
        ]
        for i in range(b)
    ]


def _trace(
    final: tuple[float, int, int, int, float],
    back: list[list[tuple[int, int, float]]],
    atts: list[torch.Tensor | None],
    feature_shape: tuple[int, int],
) -> Hypothesis:
    """Follow the back-pointers of a finished candidate to the start: its ids, log-probs and attention."""
    score, step, row, token, lp = final
    ids, lps, att = [token], [lp], []
    if atts[step] is not None:
        att.append(atts[step][row])
    for s in range(step, 0, -1):
        row, token, lp = back[s][row]
        ids.append(token)
        lps.append(lp)
        if atts[s - 1] is not None:
            att.append(atts[s - 1][row])
    maps = _attention_maps(att[::-1], feature_shape) if att else None
    return Hypothesis(ids[::-1], score, lps[::-1], maps)
