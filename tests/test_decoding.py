"""Greedy and beam search, and the LaTeX syntax constraints."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from texlens.decoding import END_ID, Hypothesis, LatexConstraint, beam_search, confidence, greedy_decode
from texlens.latex import LatexError, Vocab, normalize
from texlens.models import MODELS, build_model

NAMES = sorted(MODELS)
TOKENS = (
    r"{ } ^ _ \frac \sqrt [ ] \left \right ( ) | \begin{matrix} \end{matrix} \begin{array} \end{array}"
    r" & \\ x y 1 2 3 + = \alpha c \hat '"
).split()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return Vocab(TOKENS)


def tiny(name: str, vocab: Vocab, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, len(vocab), preset="tiny").eval()


def images(b: int = 3, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, 1, 32, 128, generator=torch.Generator().manual_seed(seed)) > 0.7).float()


def accepted(constraint: LatexConstraint, ids: list[int], max_len: int) -> bool:
    """Whether the constraint allows every token of ``ids`` in turn."""
    return constraint.first_rejected(ids, max_len) is None


def balanced(tokens: list[str]) -> bool:
    depth = 0
    for t in tokens:
        depth += (t == "{") - (t == "}")
        if depth < 0:
            return False
    return depth == 0


# --- search ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_constrained_random_models_give_valid_latex(name, vocab):
    """Random weights: every output ends with <end> within max_len, braces balance, the tokenizer accepts it."""
    constraint = LatexConstraint(vocab.itos)
    for seed in range(3):
        model = tiny(name, vocab, seed)
        hyps = greedy_decode(model, images(seed=seed), max_len=30, vocab=vocab)
        hyps += [
            h
            for group in beam_search(model, images(seed=seed), beam=3, max_len=30, vocab=vocab)
            for h in group
        ]
        for h in hyps:
            assert h.ids[-1] == vocab.end_id and len(h.ids) <= 30
            assert vocab.end_id not in h.ids[:-1]
            tokens = vocab.decode(h.ids)
            assert balanced(tokens), tokens
            if tokens:
                normalize(" ".join(tokens))  # raises LatexError on a missing argument
            assert accepted(constraint, h.ids, 30)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_hypothesis_fields(name, vocab):
    model = tiny(name, vocab)
    (h,) = greedy_decode(model, images(1), max_len=20, vocab=vocab)
    assert isinstance(h, Hypothesis)
    assert len(h.token_logprobs) == len(h.ids)
    assert h.score == pytest.approx(sum(h.token_logprobs), abs=1e-4)
    assert 0.0 < confidence(h) <= 1.0
    assert h.attention.shape == (len(h.ids), *model.feature_shape(32, 128))
    assert torch.allclose(torch.from_numpy(h.attention).sum((1, 2)), torch.ones(len(h.ids)), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("constraints", [True, False])
def test_beam_one_equals_greedy(name, constraints, vocab):
    model = tiny(name, vocab)
    x = images(4)
    greedy = greedy_decode(model, x, max_len=25, constraints=constraints, vocab=vocab)
    beams = beam_search(
        model, x, beam=1, max_len=25, length_penalty=0.0, constraints=constraints, vocab=vocab
    )
    for g, (b,) in zip(greedy, beams, strict=True):
        assert b.ids == g.ids
        assert b.score == pytest.approx(g.score, abs=1e-4)
        assert b.token_logprobs == pytest.approx(g.token_logprobs, abs=1e-5)
        assert b.attention.shape == g.attention.shape


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, "mean"])
def test_beam_sorted_and_consistent(name, length_penalty, vocab):
    model = tiny(name, vocab, seed=1)
    results = beam_search(model, images(2), beam=4, max_len=25, length_penalty=length_penalty, vocab=vocab)
    assert len(results) == 2
    for group in results:
        assert 1 <= len(group) <= 4
        scores = [h.score for h in group]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.ids) for h in group}) == len(group)  # distinct hypotheses
        for h in group:
            assert len(h.token_logprobs) == len(h.ids) == h.attention.shape[0]
            total = sum(h.token_logprobs)
            if length_penalty == 0.0:
                assert h.score == pytest.approx(total, abs=1e-4)
            elif length_penalty == "mean":
                assert h.score == pytest.approx(total / len(h.ids), abs=1e-4)


class _StatePerRow:
    """A model whose every state part has a row per hypothesis: beam search as it was before the beams of an
    image shared one copy of its memory."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def reorder_state(self, state, index, images=None):
        return self.model.reorder_state(state, index, images=index)


class _EndsPerImage:
    """A model that ends image i's hypotheses after 2 + 2 i tokens (i: its rank in the batch by mean memory), so
    that the images of a batch finish at different steps."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def init_state(self, memory):
        rank = memory.abs().mean((1, 2)).argsort().argsort()
        return {"inner": self.model.init_state(memory), "ends": 2 + 2 * rank, "t": 0}

    def reorder_state(self, state, index, images=None):
        inner = self.model.reorder_state(state["inner"], index, images=images)
        return {"inner": inner, "ends": state["ends"][index], "t": state["t"]}

    def step(self, tokens, state):
        logits, inner, att = self.model.step(tokens, state["inner"])
        t = state["t"] + 1
        logits = logits.clone()
        due = t >= state["ends"]
        logits[:, END_ID] = torch.where(due, logits.max(-1).values + 5, logits.min(-1).values - 5)
        return logits, {"inner": inner, "ends": state["ends"], "t": t}, att


@pytest.mark.parametrize("name", NAMES)
def test_beams_sharing_their_image_state_find_the_same(name, vocab):
    """One copy of each image's memory for its beams reads exactly what a copy per beam reads, also as images
    finish one after another and leave the batch."""
    model = _EndsPerImage(tiny(name, vocab, seed=3))
    x = images(5, seed=3)
    shared = beam_search(model, x, beam=3, max_len=30, vocab=vocab, constraints=False)
    per_row = beam_search(_StatePerRow(model), x, beam=3, max_len=30, vocab=vocab, constraints=False)
    assert sorted(len(g[0].ids) for g in shared) == [2, 4, 6, 8, 10]  # <end> included
    assert [[h.ids for h in g] for g in shared] == [[h.ids for h in g] for g in per_row]
    for f, g in zip(shared, per_row, strict=True):
        assert [h.score for h in f] == pytest.approx([h.score for h in g], abs=1e-5)


def test_beam_finds_at_least_greedy_score(vocab):
    """With alpha = 0 the best beam is never worse than the greedy path."""
    model = tiny("resnet-transformer", vocab, seed=2)
    x = images(3, seed=2)
    greedy = greedy_decode(model, x, max_len=25, vocab=vocab)
    beams = beam_search(model, x, beam=5, max_len=25, length_penalty=0.0, vocab=vocab)
    for g, group in zip(greedy, beams, strict=True):
        assert group[0].score >= g.score - 1e-4


def test_constraints_need_vocab():
    model = build_model("cnn-rnn", 30, preset="tiny").eval()
    with pytest.raises(ValueError, match="vocab"):
        greedy_decode(model, images(1), max_len=5)
    (h,) = greedy_decode(model, images(1), max_len=5, constraints=False)
    assert len(h.ids) <= 5


# --- constraint rules -----------------------------------------------------------------------------------------


def allowed_after(constraint: LatexConstraint, vocab: Vocab, prefix: str, remaining: int = 100) -> set[str]:
    state = constraint.initial()
    ids = vocab.encode(prefix, add_special=False) if prefix else []
    for i, tok in enumerate(ids):
        assert constraint.mask([state], remaining + len(ids) - i)[0, tok], (prefix, vocab.itos[tok])
        state = constraint.advance(state, tok)
    mask = constraint.mask([state], remaining)[0]
    return {vocab.itos[i] for i in np.flatnonzero(mask).tolist()}


def test_constraint_rules(vocab):
    c = LatexConstraint(vocab.itos)
    start = allowed_after(c, vocab, "")
    assert "}" not in start and r"\right" not in start and r"\end{matrix}" not in start
    assert "<pad>" not in start and "<start>" not in start and "<unk>" not in start and "[MASK]" not in start
    assert "<end>" in start and "x" in start
    after_script = allowed_after(c, vocab, "x ^")
    assert {"<end>", "}", "^", "&", "\\\\"}.isdisjoint(after_script) and {"{", "x", r"\frac"} <= after_script
    assert "<end>" not in allowed_after(c, vocab, r"\frac { 1 }")
    assert "<end>" in allowed_after(c, vocab, r"\frac { 1 } 2")
    assert "<end>" not in allowed_after(c, vocab, "{ x")
    assert "}" in allowed_after(c, vocab, "{ x")
    assert "}" not in allowed_after(c, vocab, "{ x ^")
    assert allowed_after(c, vocab, r"x \left") <= {"(", ")", "[", "]", "|"}
    inside = allowed_after(c, vocab, r"\left ( x")
    assert r"\right" in inside and "<end>" not in inside and "}" not in inside
    assert "<end>" in allowed_after(c, vocab, r"\left ( x \right )")
    env = allowed_after(c, vocab, r"\begin{array} { c c } x & y")
    assert r"\end{array}" in env and r"\end{matrix}" not in env and "<end>" not in env
    nested = allowed_after(c, vocab, r"\begin{matrix} \begin{array} { c } x \end{array}")
    assert r"\end{matrix}" in nested and r"\end{array}" not in nested
    # \sqrt [ n ] { x }: "[" opens the optional argument, "]" then closes it, the argument is still owed
    assert "]" in allowed_after(c, vocab, r"\sqrt [ 3")
    assert "<end>" not in allowed_after(c, vocab, r"\sqrt [ 3 ]")
    assert "<end>" in allowed_after(c, vocab, r"\sqrt [ 3 ] { x }")


def compiles(formula: str, folder: Path) -> bool:
    """Whether LaTeX (amsmath) typesets ``$formula$`` without an error."""
    doc = (
        r"\documentclass{article}\usepackage{amsmath,amssymb}\begin{document}$" + formula + r"$\end{document}"
    )
    (folder / "t.tex").write_text(doc + "\n", encoding="utf-8")
    run = ["latex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"]
    return subprocess.run(run, cwd=folder, capture_output=True, timeout=60).returncode == 0


def test_a_macros_unbraced_argument_is_one_symbol(tmp_path):
    """`\\frac{a}\\mathrm{b}` is a TeX error (the command takes the macro's closing brace); a script reads a math
    field, where `x^\\frac12` is fine but `x^\\left(` is not. What the constraint allows there, TeX accepts."""
    v = Vocab(TOKENS + r"\mathrm".split())
    c = LatexConstraint(v.itos)
    after_macro = allowed_after(c, v, r"\frac { x }")
    assert {"{", "y", r"\alpha"} <= after_macro
    assert {r"\mathrm", r"\frac", r"\sqrt", r"\hat", r"\left"}.isdisjoint(after_macro)
    after_script = allowed_after(c, v, "x ^")
    assert {"{", "2", r"\frac", r"\mathrm"} <= after_script and r"\left" not in after_script
    if not shutil.which("latex"):
        pytest.skip("TeX Live is not installed")
    for formula in (r"\frac{a}b", r"x^\frac12", r"x^\mathrm{T}", r"{a}\mathbin\mathrm{b}c"):
        assert compiles(formula, tmp_path), formula
    for formula in (r"\frac{a}\mathrm{b}", r"\frac{a}\sqrt{b}", r"x^\left(a\right)"):
        assert not compiles(formula, tmp_path), formula


def test_a_script_takes_unbraced_only_what_tex_reads_as_a_field():
    """`x_\\cdots` is "Missing { inserted" (`\\cdots` is `\\mathinner{...}`), `x_\\sum` is "Limit controls must
    follow a math operator": over the bundled vocabulary, every command the constraint lets a script take unbraced
    compiles there, and every one it refuses compiles braced but not unbraced."""
    from texlens.data.render import render_many_pixels
    from texlens.decoding import EXTRA_ARITY, NOT_A_FIELD
    from texlens.latex import ARITY

    v = Vocab.load(Path(__file__).resolve().parents[1] / "src/texlens/weights/default/vocab.json")
    c = LatexConstraint(v.itos)
    after = allowed_after(c, v, "x _")
    assert {r"\frac", r"\mathrm", r"\alpha", "{"} <= after
    assert after.isdisjoint({r"\cdots", r"\sum", r"\sqrt", r"\bar", r"\left"})
    assert r"\cdots" not in allowed_after(c, v, "x ^") and r"\cdots" in allowed_after(c, v, "x ^ {")
    if not shutil.which("latex"):
        pytest.skip("TeX Live is not installed")

    def call(command: str) -> str:
        return command + "{a}" * (ARITY.get(command, 0) or EXTRA_ARITY.get(command, 0))

    allowed = sorted(t for t in after if t[:1] == "\\" and t[1:2].isalpha())
    refused = sorted(t for t in NOT_A_FIELD if t in v)
    assert len(allowed) > 50 and len(refused) > 50
    commands = allowed + refused
    images = render_many_pixels(
        [f"x_{call(t)} y" for t in commands] + [f"x_{{{call(t)}}} y" for t in commands]
    )
    unbraced = dict(zip(commands, images[: len(commands)], strict=True))
    braced = dict(zip(commands, images[len(commands) :], strict=True))
    # (Commands that fail braced too, as `\\big{a}`, fail for their own arguments: not this rule's business.)
    assert [t for t in allowed if unbraced[t] is None and braced[t] is not None] == []
    assert [t for t in refused if unbraced[t] is not None or braced[t] is None] == []


def test_hspace_takes_a_dimension(tmp_path):
    """`\\hspace{0.5m}` is "Illegal unit of measure": the argument is [-] digits [. digits] [true] unit; random
    walks under the constraint, with any length budget, write nothing else and always close."""
    v = Vocab(TOKENS + list("-.*abcdefimnprstux0456789") + [r"\hspace"])
    c = LatexConstraint(v.itos)
    assert allowed_after(c, v, r"\hspace") == {"{", "*"}
    assert allowed_after(c, v, r"\hspace {") == {"-", ".", *"0123456789"}
    assert "}" not in allowed_after(c, v, r"\hspace { 1") and "p" in allowed_after(c, v, r"\hspace { 1")
    assert allowed_after(c, v, r"\hspace { 1 . 5 p") == {"t", "c"}
    assert allowed_after(c, v, r"\hspace * { 2 e x") == {"}"}
    assert allowed_after(c, v, r"\hspace { . 5 t r u e") >= {"c", "m", "i", "p"}
    assert r"\hspace" not in allowed_after(c, v, "x ^")  # no math field: `x^\hspace{1cm}` is "Missing {"
    dimension = re.compile(
        r"\\hspace (\* )?\{ (- )?([0-9] )*(\. )?([0-9] )*(t r u e )?(p t|p c|c m|c c|m m|i n|e m|e x|b p|d d|s p) \}"
    )
    rng = random.Random(0)
    for budget in [7, 8, 9, 12, 20] * 20:
        state, ids = c.initial(), []
        for token in v.encode(r"\hspace", add_special=False):
            state, ids = c.advance(state, token), [*ids, token]
        while not ids or ids[-1] != v.end_id:
            allowed = np.flatnonzero(c.mask([state], budget - len(ids))[0]).tolist()
            assert allowed, v.decode(ids)
            token = rng.choice(allowed)
            state, ids = c.advance(state, token), [*ids, token]
        assert len(ids) <= budget
        text = " ".join(v.itos[i] for i in ids[:-1])
        assert dimension.match(text), text
    if not shutil.which("latex"):
        pytest.skip("TeX Live is not installed")
    assert compiles(r"x\hspace{.5truecm}y\hspace*{-1.25em}z", tmp_path)
    assert not compiles(r"x\hspace{0.5m}y", tmp_path) and not compiles(r"x\hspace{1.}y", tmp_path)
    assert not compiles(r"x^\hspace{1cm}", tmp_path)


def test_a_base_takes_one_superscript_and_one_subscript(vocab):
    """TeX rejects "x^{2}^{3}" ("Double superscript"); the constraint never writes it."""
    c = LatexConstraint(vocab.itos)
    for prefix in (
        "x ^ 2",
        "x ^ { 2 }",
        r"x ^ \frac { 1 } { 2 }",
        r"\left ( x \right ) ^ 2",
        "x ' ^ 2",
        "x _ 1 ^ 2",
    ):
        after = allowed_after(c, vocab, prefix)
        assert "^" not in after and "'" not in after and "x" in after, prefix
    assert "_" in allowed_after(c, vocab, "x ^ 2")
    assert "_" not in allowed_after(c, vocab, "x _ { 1 }")
    assert "^" not in allowed_after(c, vocab, "x ^ 2 _ 1") and "_" not in allowed_after(c, vocab, "x ^ 2 _ 1")
    # a new base, a group or an argument of the script starts afresh
    for prefix in (
        "x ^ 2 + y",
        "{ x ^ 2 }",
        "x ^ { y",
        "x ^ { y ^ 2 } _ 1 +",
        "x '",
        "x ' '",
        r"\begin{matrix} x ^ 2 \\ y",
    ):
        assert "^" in allowed_after(c, vocab, prefix), prefix
    assert "^" in allowed_after(c, vocab, r"x ^ { \left ( y \right )")


def test_alignments_take_columns_and_tabs_tex_accepts():
    """An array's "{ cols }" holds column letters only; "&" and "\\\\" stand directly in an alignment; a row takes
    no more "&" than the environment has columns (each of these is a TeX error otherwise)."""
    v = Vocab(TOKENS + r"l r \begin{cases} \end{cases}".split())
    c = LatexConstraint(v.itos)
    assert allowed_after(c, v, r"\begin{array}") == {"{"}
    assert allowed_after(c, v, r"\begin{array} {") == {"c", "l", "r", "|"}  # no "}" before a column, no "x"
    assert allowed_after(c, v, r"\begin{array} { c |") == {"c", "l", "r", "|", "}"}
    long_spec = r"\begin{array} { " + "c " * 24
    assert allowed_after(c, v, long_spec.strip()) == {"}"}  # a runaway spec must end
    for prefix in ("x", "{ x", r"\left ( x", r"\begin{matrix} { x", r"\begin{matrix} x ^"):
        after = allowed_after(c, v, prefix)
        assert "&" not in after and "\\\\" not in after, prefix
    assert {"&", "\\\\"} <= allowed_after(c, v, r"\begin{matrix} x")
    two = allowed_after(c, v, r"\begin{array} { c | c } x & y")
    assert "&" not in two and "\\\\" in two and r"\end{array}" in two
    assert "&" in allowed_after(c, v, r"\begin{array} { c | c } x & y \\ 1")  # a new row
    assert "&" not in allowed_after(c, v, r"\begin{cases} x & y")
    assert "&" in allowed_after(c, v, r"\begin{matrix} " + "x & " * 8 + "x")
    assert "&" not in allowed_after(c, v, r"\begin{matrix} " + "x & " * 9 + "x")  # MaxMatrixCols is 10
    nested = r"\begin{array} { c c c } x & \begin{cases} y & 1 \end{cases}"
    assert "&" in allowed_after(c, v, nested)  # the outer row has used one of its two


def test_budget_forces_closing(vocab):
    c = LatexConstraint(vocab.itos)
    # "{ \frac {" needs at least "} 1 } <end>"... : cost 5 = "}" + 1 arg + "}" + <end> + ... computed by the state
    prefix = r"{ \frac { x"
    state = c.initial()
    for tok in vocab.encode(prefix, add_special=False):
        state = c.advance(state, tok)
    assert state.cost == 4  # "}" closes the numerator, one token for the denominator, "}", <end>
    tight = allowed_after(c, vocab, prefix, remaining=state.cost)
    assert tight == {"}"}
    roomy = allowed_after(c, vocab, prefix, remaining=state.cost + 1)
    assert "x" in roomy and "{" not in roomy  # an atom fits, a new group would not
    assert allowed_after(c, vocab, "x", remaining=1) == {"<end>"}


def test_repetition_loop_is_cut(vocab):
    c = LatexConstraint(vocab.itos, loop_span=12)
    loop = "x + y = " * 3
    assert "x" not in allowed_after(c, vocab, loop.strip())
    assert "x" in allowed_after(c, vocab, "x + y = x + y =")
    assert "x" in allowed_after(LatexConstraint(vocab.itos), vocab, loop.strip())  # default span is longer
    # Once cut, the loop is not taken up again a token later: the formula closes what is open and ends.
    assert allowed_after(c, vocab, loop + "2") == {"<end>"}
    assert allowed_after(c, vocab, "\\sqrt { " + loop + "2") == {"}"}
    assert "x" in allowed_after(c, vocab, "\\sqrt { x + y = x + y = 2")  # no loop cut: anything that fits


def test_random_walks_always_close(vocab):
    """Sampling uniformly among allowed tokens always ends with <end> in time, with a parseable formula."""
    c = LatexConstraint(vocab.itos)
    rng = random.Random(0)
    for _ in range(200):
        max_len = rng.randint(1, 40)
        state, ids = c.initial(), []
        for i in range(max_len):
            options = np.flatnonzero(c.mask([state], max_len - i)[0]).tolist()
            assert options, ids
            tok = rng.choice(options)
            ids.append(tok)
            if tok == vocab.end_id:
                break
            state = c.advance(state, tok)
            assert state.cost <= max_len - i - 1
        assert ids[-1] == vocab.end_id
        tokens = vocab.decode(ids)
        assert balanced(tokens)
        if tokens:
            normalize(" ".join(tokens))


def test_real_formulas_are_never_rejected(shared_data):
    """Every canonical IM2LATEX validation formula passes the constraint (it must never forbid real LaTeX)."""
    lines = (shared_data / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").split("\n")
    token_lists = []
    for line in lines[:2000]:
        try:
            token_lists.append(normalize(line).split())
        except LatexError:
            continue
    vocab = Vocab.build(token_lists)
    c = LatexConstraint(vocab.itos)
    rejected = []
    for tokens in token_lists:
        ids = vocab.encode(tokens)[1:]
        if not accepted(c, ids, len(ids)):  # even with no length to spare
            rejected.append(" ".join(tokens))
    assert not rejected, rejected[:3]
