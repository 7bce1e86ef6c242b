"""Render LaTeX formulas to grey PNG images with TeX Live: many formulas per document, one per page.

Each chunk of formulas becomes one ``latex`` (DVI mode) document in which every formula sits on its own
source line inside a ``preview`` environment, so page k of the DVI is formula k of the chunk and a TeX
error's line number names the formula that caused it. Failing formulas are dropped and the rest are
compiled again, so one bad formula never takes its neighbours down; ``dvipng`` then rasterises a whole
DVI per resolution in one call.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from texlens.latex import LatexError, normalize

__all__ = [
    "FONTS",
    "EXTRA_FONTS",
    "MAIN_FONTS",
    "MORE_FONTS",
    "UNSEEN_FONTS",
    "RenderError",
    "RenderReport",
    "check_formula",
    "render_formulas",
    "render_many_pixels",
    "render_pixels",
    "summarize_failures",
]

# Font name -> preamble lines that select it. Every font keeps the same symbol coverage (see _PREAMBLE).
FONTS: dict[str, str] = {
    "cm": "",
    "times": r"\usepackage{mathptmx}",
    "palatino": r"\usepackage{mathpazo}",
    "txfonts": r"\usepackage{txfonts}",
    "pxfonts": r"\usepackage{pxfonts}",
    # Euler math with Concrete text, the "Concrete Mathematics" look (eulervm is not in Debian's TeX Live).
    "euler": "\\usepackage{beton}\n\\usepackage{euler}",
    # Text faces made math faces with mathastext (Latin letters and digits; Greek and symbols stay Computer
    # Modern): other shapes than the classic TeX fonts above, Helvetica among them for sans-serif mathematics.
    "bookman": "\\usepackage{bookman}\n\\usepackage[italic]{mathastext}",
    "newcent": "\\usepackage{newcent}\n\\usepackage[italic]{mathastext}",
    "charter": "\\usepackage{charter}\n\\usepackage[italic]{mathastext}",
    "utopia": "\\usepackage{utopia}\n\\usepackage[italic]{mathastext}",
    "helvet": "\\usepackage[scaled]{helvet}\n\\renewcommand{\\familydefault}{\\sfdefault}\n"
    "\\usepackage[italic]{mathastext}",
    # More faces for training (the builder's train_fonts2): Computer Modern Sans math (sansmath, the look of
    # slides), Courier as a typewriter face, Kerkis (a Bookman-like face of its own), and Times and Charter with
    # upright letters, as some textbooks and word processors set mathematics. T1 encoding gives Courier and Kerkis
    # their own minus sign (in OT1, mathastext finds a brace in its place).
    "sansmath": "\\usepackage{sansmath}\n\\sansmath\n\\renewcommand{\\familydefault}{\\sfdefault}",
    "courier": "\\usepackage[T1]{fontenc}\n\\usepackage{courier}\n\\renewcommand{\\familydefault}{\\ttdefault}\n"
    "\\usepackage[italic]{mathastext}",
    "kerkis": "\\usepackage[T1]{fontenc}\n\\usepackage{kerkis}\n\\usepackage[italic]{mathastext}",
    "times-upright": "\\usepackage{mathptmx}\n\\usepackage{mathastext}",
    "charter-upright": "\\usepackage{charter}\n\\usepackage{mathastext}",
    # Two faces no training set uses, to measure how the model reads shapes it never saw besides Euler
    # (benchmarks/unseen_fonts.py): URW Gothic (psnfss's avant), a geometric sans-serif, and Helvetica with
    # upright letters, as sans-serif slides and some textbooks set mathematics.
    "avant": "\\usepackage{avant}\n\\renewcommand{\\familydefault}{\\sfdefault}\n"
    "\\usepackage[italic]{mathastext}",
    "helvet-upright": "\\usepackage[scaled]{helvet}\n\\renewcommand{\\familydefault}{\\sfdefault}\n"
    "\\usepackage{mathastext}",
}
# Fonts of the builder's main rendered sets (train_cn_math, train_synth, train_im2latex_render).
MAIN_FONTS = ("cm", "times", "palatino", "txfonts")
# Fonts of the builder's train_fonts set: every font but the classic four of the main sets, Euler, which
# cn_math validation holds out, and UNSEEN_FONTS.
MORE_FONTS = ("pxfonts", "bookman", "newcent", "charter", "utopia", "helvet")
# Fonts of the builder's train_fonts2 set, added after stage 17 (train_fonts stays as the stages before it had it).
EXTRA_FONTS = ("sansmath", "courier", "kerkis", "times-upright", "charter-upright")
# Fonts no training set draws, besides Euler: a check that what is learned carries to other unseen shapes.
UNSEEN_FONTS = ("avant", "helvet-upright")
# Fonts whose own package already defines \llbracket and friends (stmaryrd would clash with them).
_FONTS_WITH_STMARY = frozenset({"txfonts", "pxfonts"})

# Larger formulas are refused by TeX itself (see \tlship): a stray \rule{5m}{5m} would make dvipng
# allocate gigabytes.
MAX_WIDTH_PT = 2000
MAX_HEIGHT_PT = 600
MAX_FORMULA_CHARS = 4000


def _scratch_dir() -> str | None:
    """Where chunks are compiled: $TEXLENS_RENDER_TMP, else /dev/shm when it is roomy, else the temp dir.

    Creating thousands of small files on a disk can cost more system time than rendering them.
    """
    if os.environ.get("TEXLENS_RENDER_TMP"):
        return os.environ["TEXLENS_RENDER_TMP"]
    try:
        shm = os.statvfs("/dev/shm")
        roomy = shm.f_bavail * shm.f_frsize > 512 * 2**20  # Docker's default 64 MiB is not
        return "/dev/shm" if roomy and os.access("/dev/shm", os.W_OK) else None
    except OSError:
        return None


_SCRATCH = _scratch_dir()

_PREAMBLE = r"""\documentclass[12pt]{article}
\usepackage{amsmath}
%(font)s
\usepackage{amssymb}
\usepackage{mathrsfs}
%(stmaryrd)s
\usepackage{cancel}
\usepackage[active,tightpage]{preview}
\DeclareSymbolFont{tlyhlarge}{OMX}{yhex}{m}{n}
\DeclareMathAccent{\tlwideparen}{\mathord}{tlyhlarge}{"F3}
\providecommand{\overparen}[1]{\tlwideparen{#1}}
\providecommand{\Perp}{\mathrel{\perp\mkern-10mu\perp}}
\providecommand{\bm}[1]{\boldsymbol{#1}}
\newsavebox\tlbox
\newcommand\tltoolarge{\errmessage{Formula too large (over %(maxw)dpt x %(maxh)dpt)}\null}
\newcommand\tlship{\ifdim\wd\tlbox>%(maxw)dpt \tltoolarge\else
  \ifdim\dimexpr\ht\tlbox+\dp\tlbox\relax>%(maxh)dpt \tltoolarge\else\box\tlbox\fi\fi}
\pagestyle{empty}
\begin{document}
"""
# One formula per source line, so that "l.N" in the log names the formula. The braces keep a formula's
# leftovers inside it; the space before "}" stops a trailing backslash from escaping that brace.
_LINE = "\\begin{preview}\\setbox\\tlbox\\hbox{$\\displaystyle{%s }$}\\tlship\\end{preview}"

# --- refusing dangerous TeX -------------------------------------------------------------------------------

# Control words that define macros, touch files or the terminal, change catcodes, leave a formula's group,
# or affect pages: none belongs in a formula, and each could break the neighbours or the machine.
FORBIDDEN_COMMANDS = frozenset(
    (
        r"\def \gdef \edef \xdef \let \futurelet \global \globaldefs \long \outer \protected"
        r" \newcommand \renewcommand \providecommand \newenvironment \renewenvironment \newcounter"
        r" \newlength \newsavebox \newtoks \newcount \newdimen \newskip \newmuskip \newbox \newif \newfont"
        r" \newtheorem \DeclareRobustCommand \DeclareMathOperator \DeclareMathSymbol \DeclareOption"
        r" \input \include \includeonly \endinput \InputIfFileExists \IfFileExists \listfiles \scantokens"
        r" \write \immediate \openout \closeout \openin \closein \read \readline \special \includegraphics"
        r" \message \typeout \errmessage \errhelp \wlog"
        r" \catcode \lccode \uccode \sfcode \mathcode \delcode \endlinechar \newlinechar \escapechar"
        r" \makeatletter \makeatother \ExplSyntaxOn \ExplSyntaxOff \obeylines \obeyspaces \verb \dospecials"
        r" \csname \endcsname \expandafter \noexpand \afterassignment \aftergroup \romannumeral"
        r" \documentclass \usepackage \RequirePackage \LoadClass \document \enddocument \preview \endpreview"
        r" \begingroup \endgroup \bgroup \egroup \par \stop \dump"
        r" \batchmode \nonstopmode \scrollmode \errorstopmode \interactionmode"
        r" \loop \repeat \iterate \fi \else \or \unless"
        r" \shipout \output \newpage \clearpage \cleardoublepage \pagebreak \nopagebreak \enlargethispage"
        r" \vadjust \insert \mark \marks \footnote \marginpar \mag"
        r" \setcounter \addtocounter \stepcounter \refstepcounter"
        r" \count \dimen \skip \muskip \toks \countdef \dimendef \skipdef \muskipdef \toksdef"
        r" \chardef \mathchardef \font \hyphenation \patterns"
        r" \setbox \box \copy \unhbox \unvbox \unhcopy \unvcopy \wd \ht \dp \sbox \savebox \usebox"
    ).split()
)
# Whole families: conditionals (\iffalse would swallow the next formulas), tracing, pdfTeX primitives,
# every-hooks, font declarations, preview's own switches, TeX's \show... commands.
_FORBIDDEN_PREFIXES = (r"\if", r"\tracing", r"\pdf", r"\every", r"\Declare", r"\Preview", r"\show")
_ALLOWED_DESPITE_PREFIX = frozenset({r"\iff"})
FORBIDDEN_ENVIRONMENTS = frozenset(
    "document preview filecontents filecontents* verbatim verbatim* comment lstlisting minted".split()
)

_LEX = re.compile(r"\\(?:[A-Za-z]+|.)|\^\^|[{}%$]|\\", re.S)
_ENV = re.compile(r"\\(?:begin|end)\s*\{([^{}]*)\}")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _strip_comment(line: str) -> str:
    """A line without its TeX comment: from the first unescaped ``%`` to the end, as TeX reads it."""
    for match in _LEX.finditer(line):
        if match.group() == "%":
            return line[: match.start()]
    return line


# Space-tokenised corpora (IM2LATEX) write "\\hspace { 1 c m }", which TeX cannot read as a length.
_LENGTH_COMMAND = re.compile(
    r"(\\(?:hspace|vspace|rule|raisebox)\s*\*?\s*)((?:[\[{][^\[\]{}]*[\]}]\s*){1,3})"
)
_LENGTH = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:true)?(?:pt|pc|in|bp|cm|mm|dd|cc|sp|em|ex|mu)")


def _join_lengths(formula: str) -> str:
    """Spaces taken out of the length arguments of \\hspace, \\vspace, \\rule and \\raisebox."""

    def join_arg(arg: re.Match[str]) -> str:
        joined = re.sub(r"\s+", "", arg[2])
        return arg[1] + (joined if _LENGTH.fullmatch(joined) else arg[2]) + arg[3]

    def join(match: re.Match[str]) -> str:
        return match[1] + re.sub(r"([\[{])([^\[\]{}]*)([\]}])", join_arg, match[2])

    return _LENGTH_COMMAND.sub(join, formula)


def _clean(formula: str) -> str:
    """One-line form of a formula: comments dropped, line breaks and tabs made spaces (no \\par),
    lengths such as ``1 c m`` joined."""
    lines = [_strip_comment(line) for line in re.split(r"\r\n|[\r\n]", formula)]
    return _join_lengths(re.sub(r"[\t\f\v ]+", " ", " ".join(lines)).strip())


def check_formula(formula: str) -> str | None:
    """Why a formula must not reach TeX ("empty", "forbidden command \\def", ...), or None when it may."""
    formula = _clean(formula)
    if not formula:
        return "empty"
    if len(formula) > MAX_FORMULA_CHARS:
        return f"too long ({len(formula)} characters, at most {MAX_FORMULA_CHARS})"
    if _CONTROL_CHARS.search(formula):
        return "forbidden control character"
    depth = 0
    for match in _LEX.finditer(formula):
        tok = match.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth < 0:
                return "unbalanced braces"
        elif tok in ("$", "%", "^^"):  # "%" only reaches here from a caller that skipped _clean
            return f"forbidden character {tok}"
        elif tok == "\\":
            continue  # a lone trailing backslash: harmless, see _LINE
        elif tok in FORBIDDEN_COMMANDS or (
            tok.startswith(_FORBIDDEN_PREFIXES) and tok not in _ALLOWED_DESPITE_PREFIX
        ):
            return f"forbidden command {tok}"
    if depth != 0:
        return "unbalanced braces"
    for match in _ENV.finditer(formula):
        if match.group(1).strip() in FORBIDDEN_ENVIRONMENTS:
            return f"forbidden environment {match.group(1).strip()}"
    return None


# --- one latex run ----------------------------------------------------------------------------------------

_FILE_ERROR = re.compile(r"^(.+?\.(?:tex|sty|cls|def|fd|cfg|clo|ltx)):(\d+): (.*)$")
_BANG_ERROR = re.compile(r"^! (.*)$")
_CONTEXT_LINE = re.compile(r"^l\.(\d+) ?(.*)$")
_PAGES = re.compile(r"Output written on \S+ \((\d+) pages?")
_CONTROL_SEQ = re.compile(r"\\(?:[A-Za-z@]+|.)")
# Log lines unwrapped so that one message is one line.
_TEX_ENV = {"max_print_line": "100000", "error_line": "254", "half_error_line": "238"}


@dataclass
class _Compiled:
    """What one latex run produced: the DVI, its page count, and errors by formula position."""

    dvi: Path
    pages: int
    errors: dict[int, str] = field(default_factory=dict)  # position in the chunk -> reason
    stray: list[str] = field(default_factory=list)  # errors that name no formula line
    timed_out: bool = False


def _preamble(font: str) -> str:
    stmary = "" if font in _FONTS_WITH_STMARY else r"\usepackage{stmaryrd}"
    return _PREAMBLE % {"font": FONTS[font], "stmaryrd": stmary, "maxw": MAX_WIDTH_PT, "maxh": MAX_HEIGHT_PT}


def _parse_log(log: str, tex_name: str, first_line: int, count: int) -> tuple[dict[int, str], list[str], int]:
    """Errors of a latex log attributed to formula positions, unattributed errors, and the page count."""
    lines = log.splitlines()
    errors: dict[int, str] = {}
    stray: list[str] = []
    for k, line in enumerate(lines):
        source_line: int | None = None
        where = ""
        m = _FILE_ERROR.match(line)
        if m:
            message = m.group(3)
            if m.group(1).endswith(tex_name):
                source_line = int(m.group(2))
            else:
                where = f"{Path(m.group(1)).name}:{m.group(2)}: "
        else:
            bang = _BANG_ERROR.match(line)
            if not bang:
                continue
            message = bang.group(1)
            for follow in lines[k + 1 : k + 12]:  # the "l.N" context line follows within a few lines
                cm = _CONTEXT_LINE.match(follow)
                if cm:
                    source_line = int(cm.group(1))
                    break
        message = message.strip().rstrip(".")
        if message.startswith("Undefined control sequence"):
            names = _CONTROL_SEQ.findall(lines[k + 1] if k + 1 < len(lines) else "")
            if names:
                message = f"Undefined control sequence {names[-1]}"
        pos = source_line - first_line if source_line is not None else -1
        if 0 <= pos < count:
            errors.setdefault(pos, message)  # the first error of a formula is the cause, the rest echo it
        else:
            stray.append(where + message)
    pm = _PAGES.search(log)
    return errors, stray, int(pm.group(1)) if pm else 0


_FORMATS: dict[str, Path | None] = {}
_FORMATS_LOCK = threading.Lock()


def _format_for(font: str) -> Path | None:
    """A latex format with the font's preamble preloaded, built once per process (None if that fails).

    Loading the packages is most of a short latex run; a dumped format skips it.
    """
    with _FORMATS_LOCK:
        if font not in _FORMATS:
            folder = Path(tempfile.mkdtemp(prefix="texlens-format-"))
            atexit.register(shutil.rmtree, folder, True)
            name = f"texlens-{font}"
            preamble = _preamble(font).replace("\\begin{document}\n", "\\dump\n")
            (folder / f"{name}.tex").write_text(preamble, encoding="utf-8")
            cmd = ["latex", "-ini", f"-jobname={name}", "-interaction=batchmode", "&latex", f"{name}.tex"]
            try:
                proc = subprocess.run(cmd, cwd=folder, capture_output=True, timeout=120)
                ok = proc.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            fmt = folder / f"{name}.fmt"
            _FORMATS[font] = fmt if ok and fmt.exists() else None
        return _FORMATS[font]


def _compile(formulas: Sequence[str], font: str, workdir: Path, name: str, timeout: float) -> _Compiled:
    """Run latex once on the formulas (already checked), one per line and one per page."""
    fmt = _format_for(font)
    head = "\\begin{document}\n" if fmt else _preamble(font)
    first_line = head.count("\n") + 1
    tex = workdir / f"{name}.tex"
    tex.write_text(head + "\n".join(_LINE % f for f in formulas) + "\n\\end{document}\n", encoding="utf-8")
    cmd = ["latex", "-interaction=batchmode", "-file-line-error", "-no-shell-escape", tex.name]
    if fmt:
        cmd.insert(1, f"-fmt={fmt}")
    dvi = workdir / f"{name}.dvi"
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env={**os.environ, **_TEX_ENV},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return _Compiled(dvi, 0, timed_out=True)
    log_file = workdir / f"{name}.log"
    if not log_file.exists():
        return _Compiled(dvi, 0, stray=[f"latex wrote no log (exit status {proc.returncode})"])
    log = log_file.read_bytes().decode("utf-8", errors="replace")
    if proc.returncode == 0:
        pm = _PAGES.search(log)
        pages = int(pm.group(1)) if pm else 0
        if pages == len(formulas):
            return _Compiled(dvi, pages)
    errors, stray, pages = _parse_log(log, tex.name, first_line, len(formulas))
    if proc.returncode != 0 and not errors and not stray:
        stray.append(f"latex exited with status {proc.returncode}")
    return _Compiled(dvi, pages, errors, stray)


# --- one chunk: compile, drop failures, compile again, rasterise ------------------------------------------


class RenderError(ValueError):
    """A formula that TeX refused, or that must not reach TeX; the message is the reason."""


@dataclass(frozen=True)
class _Item:
    index: int  # position in the caller's list
    formula: str  # one line, checked
    dpi: int


def _compile_timeout(count: int) -> float:
    # A clean chunk of 200 compiles in a fifth of a CPU second; allow for busy machines.
    return 10.0 + 0.05 * count


def _rasterize(
    dvi: Path, group: list[_Item], workdir: Path, name: str, results: dict[int, np.ndarray | str]
) -> None:
    """dvipng the DVI (one call per run of equal DPI) and read each page back as 8-bit grey."""
    start = 0
    while start < len(group):
        dpi = group[start].dpi
        end = start
        while end + 1 < len(group) and group[end + 1].dpi == dpi:
            end += 1
        pattern = workdir / f"{name}_{dpi}_%d.png"
        # dvipng 1.15 gives the first page of a range that starts after page 1 the size of the page before it
        # (tightpage's box of that page): a formula cut to another one's box. Starting the range one page early
        # and dropping that page gives every wanted page its own box.
        first = start if start == 0 else start - 1
        cmd = [
            "dvipng",
            "-q",
            "--picky",
            "-T",
            "tight",
            "-D",
            str(dpi),
            "-z",
            "1",
            "-bg",
            "White",
            "-fg",
            "Black",
            "-pp",
            f"{first + 1}-{end + 1}",
            "-o",
            str(pattern),
            dvi.name,
        ]
        try:
            subprocess.run(
                cmd,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30.0 + 0.05 * (end - start + 1),
            )
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        for page in range(start + 1, end + 2):
            item = group[page - 1]
            png = workdir / f"{name}_{dpi}_{page}.png"
            image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) if png.exists() else None
            if image is None:
                results[item.index] = "dvipng timed out" if timed_out else "dvipng could not render the page"
            elif image.min() > 127:
                results[item.index] = "blank image (no ink)"
            else:
                results[item.index] = image
            png.unlink(missing_ok=True)
        start = end + 1


def _render_chunk(items: list[_Item], font: str) -> dict[int, np.ndarray | str]:
    """Render a chunk; each item's index maps to its grey image or to the reason it failed."""
    results: dict[int, np.ndarray | str] = {}
    with tempfile.TemporaryDirectory(prefix="texlens-render-", dir=_SCRATCH) as tmp:
        workdir = Path(tmp)
        runs = 0

        def process(group: list[_Item]) -> None:
            nonlocal runs
            name = f"c{runs}"
            runs += 1
            res = _compile([it.formula for it in group], font, workdir, name, _compile_timeout(len(group)))
            if not res.timed_out and not res.errors and not res.stray and res.pages == len(group):
                _rasterize(res.dvi, group, workdir, name, results)
            elif res.errors and not res.timed_out:
                # An error on the line right after another failing formula may be that formula's
                # leftover: try such formulas again on their own; the others failed by themselves.
                bad = set(res.errors)
                for pos, reason in res.errors.items():
                    if pos - 1 not in bad:
                        results[group[pos].index] = reason
                good = [it for pos, it in enumerate(group) if pos not in bad]
                retry = [group[pos] for pos in sorted(bad) if pos - 1 in bad]
                if good:
                    process(good)
                if retry:
                    process(retry)
            elif len(group) == 1:
                if res.timed_out:
                    reason = "latex timed out"
                elif res.stray:
                    reason = res.stray[0]
                else:
                    reason = f"made {res.pages} pages instead of 1"
                results[group[0].index] = reason
            else:  # a runaway formula, or an error or page count that names no formula: bisect
                half = len(group) // 2
                process(group[:half])
                process(group[half:])
            for suffix in (".tex", ".dvi", ".log", ".aux"):
                (workdir / f"{name}{suffix}").unlink(missing_ok=True)

        process(items)
    return results


# --- the public entry points ------------------------------------------------------------------------------


@dataclass
class RenderReport:
    """What render_formulas did: images made, formulas that failed and why, and the time it took."""

    rendered: list[tuple[str, int, str, int]] = field(default_factory=list)  # (image path, index, font, dpi)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (formula index, reason)
    seconds: float = 0.0

    @property
    def formulas_per_second(self) -> float:
        """Rendered images per second of wall time."""
        return len(self.rendered) / self.seconds if self.seconds > 0 else 0.0

    def summary(self, top: int = 20) -> str:
        """A few lines for people: images made, speed, and the commonest failure reasons with counts."""
        lines = [
            f"rendered {len(self.rendered)} images in {self.seconds:.1f} s ({self.formulas_per_second:.0f}/s); "
            f"{len(self.failures)} failures"
        ]
        reasons = summarize_failures(self.failures)
        lines += [f"  {count:6d}  {reason}" for reason, count in reasons[:top]]
        if len(reasons) > top:
            lines.append(f"  ... and {len(reasons) - top} other reasons (see failures.tsv)")
        return "\n".join(lines)


def _require_tex() -> None:
    missing = [tool for tool in ("latex", "dvipng") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: install TeX Live and dvipng "
            "(Debian: apt-get install texlive-latex-extra texlive-science dvipng)"
        )


def _check_fonts(fonts: Sequence[str]) -> list[str]:
    """The fonts without repeats; ValueError for an unknown one, RuntimeError if its preamble fails."""
    fonts = list(dict.fromkeys(fonts))
    unknown = [f for f in fonts if f not in FONTS]
    if unknown or not fonts:
        raise ValueError(f"unknown font(s) {unknown}; choose from {', '.join(FONTS)}")
    for font in fonts:
        _check_preamble(font)
    return fonts


@functools.cache
def _check_preamble(font: str) -> None:
    """Compile one trivial formula, so that a broken TeX installation fails once, loudly, not per formula."""
    with tempfile.TemporaryDirectory(prefix="texlens-render-", dir=_SCRATCH) as tmp:
        res = _compile(["x"], font, Path(tmp), "probe", _compile_timeout(1))
    if res.timed_out or res.errors or res.stray or res.pages != 1:
        problems = (
            "; ".join([*res.stray, *res.errors.values()]) or f"{res.pages} pages, timed out {res.timed_out}"
        )
        raise RuntimeError(
            f"the LaTeX preamble for font {font!r} does not compile: {problems} "
            "(are texlive-latex-extra, texlive-fonts-recommended and texlive-science installed?)"
        )


def _dpi_range(dpi: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (dpi, dpi) if isinstance(dpi, int) else (int(dpi[0]), int(dpi[1]))
    if not 10 <= lo <= hi <= 2400:
        raise ValueError(f"dpi must be a number or a range (lo, hi) within 10..2400, got {dpi!r}")
    return lo, hi


def summarize_failures(failures: Sequence[tuple[int, str]]) -> list[tuple[str, int]]:
    """Failure reasons with their counts, most frequent first."""
    return Counter(reason for _, reason in failures).most_common()


def _tsv_field(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)


def render_formulas(
    formulas: list[str],
    out_dir: Path,
    fonts: Sequence[str] = ("cm",),
    dpi: int | tuple[int, int] = 200,
    jobs: int = 2,
    chunk_size: int = 200,
    progress: bool = True,
    seed: int = 0,
) -> RenderReport:
    """Render formulas to ``out_dir/images/NNNNNNN_font.png`` with ``labels.tsv`` and ``failures.tsv`` beside.

    Shows a progress bar when ``progress``; ``RenderReport.summary()`` tells the failures by reason.

    ``dpi`` may be a range (lo, hi): each formula and font then gets its own DPI, drawn with ``seed``.
    A formula is labelled with ``texlens.latex.normalize`` of it; one that cannot be normalised, that
    ``check_formula`` refuses or that TeX rejects is a failure with its reason.
    """
    started = time.perf_counter()
    _require_tex()
    fonts = _check_fonts(fonts)
    lo, hi = _dpi_range(dpi)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    failures: list[tuple[int, str]] = []
    labels: dict[int, str] = {}
    cleaned = [_clean(f) for f in formulas]
    for index, formula in enumerate(cleaned):
        reason = check_formula(formula)
        if reason is None:
            try:
                labels[index] = normalize(formula)
            except LatexError as err:
                reason = f"normalize: {err}"
        if reason is not None:
            failures.append((index, reason))

    chunks: list[tuple[str, list[_Item]]] = []
    for font in fonts:
        rng = random.Random(f"texlens-render:{seed}:{font}")
        # One draw per formula, valid or not, so a formula's DPI does not depend on the others.
        dpis = [rng.randint(lo, hi) for _ in formulas]
        items = sorted((_Item(i, cleaned[i], dpis[i]) for i in labels), key=lambda it: (it.dpi, it.index))
        size = max(1, chunk_size)
        chunks.extend((font, items[k : k + size]) for k in range(0, len(items), size))

    def work(font: str, chunk: list[_Item]) -> tuple[list[tuple[str, int, str, int]], list[tuple[int, str]]]:
        done, failed = [], []
        results = _render_chunk(chunk, font)
        for item in chunk:
            result = results.get(item.index, "no result")
            if isinstance(result, str):
                failed.append((item.index, f"{font}: {result}" if len(fonts) > 1 else result))
                continue
            rel = f"images/{item.index:07d}_{font}.png"
            if not cv2.imwrite(str(out_dir / rel), result, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise OSError(f"could not write {out_dir / rel}")
            done.append((rel, item.index, font, item.dpi))
        return done, failed

    rendered: list[tuple[str, int, str, int]] = []
    with _ProgressBar(progress, sum(len(c) for _, c in chunks)) as advance:
        if jobs <= 1:
            outcomes = (work(font, chunk) for font, chunk in chunks)
        else:
            pool = ThreadPoolExecutor(max_workers=jobs)  # the work is in latex/dvipng/cv2, off the GIL
            outcomes = (f.result() for f in as_completed([pool.submit(work, f, c) for f, c in chunks]))
        try:
            for done, failed in outcomes:
                rendered.extend(done)
                failures.extend(failed)
                advance(len(done) + len(failed))
        finally:
            if jobs > 1:
                pool.shutdown(cancel_futures=True)

    font_order = {f: k for k, f in enumerate(fonts)}
    rendered.sort(key=lambda r: (r[1], font_order[r[2]]))
    failures.sort(key=lambda f: f[0])
    with open(out_dir / "labels.tsv", "w", encoding="utf-8") as fh:
        fh.writelines(f"{rel}\t{labels[index]}\n" for rel, index, _, _ in rendered)
    with open(out_dir / "failures.tsv", "w", encoding="utf-8") as fh:
        fh.writelines(f"{index}\t{_tsv_field(reason)}\n" for index, reason in failures)
    return RenderReport(rendered, failures, time.perf_counter() - started)


class _ProgressBar:
    """A rich progress bar as a context manager yielding ``advance(n)``; silent when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
        )
        self.bar.start()
        task = self.bar.add_task("render", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def render_many_pixels(
    formulas: Sequence[str], font: str = "cm", dpi: int = 200, chunk_size: int = 500
) -> list[np.ndarray | None]:
    """Grey images (uint8, dark ink on white, cropped to the ink) of formulas; None where one fails."""
    _require_tex()
    _check_fonts([font])
    lo, _ = _dpi_range(dpi)
    items = [_Item(i, _clean(f), lo) for i, f in enumerate(formulas) if check_formula(f) is None]
    out: list[np.ndarray | None] = [None] * len(formulas)
    for k in range(0, len(items), chunk_size):
        for index, result in _render_chunk(items[k : k + chunk_size], font).items():
            if not isinstance(result, str):
                out[index] = result
    return out


def render_pixels(formula: str, font: str = "cm", dpi: int = 200) -> np.ndarray:
    """Grey image (uint8, dark ink on white, cropped to the ink) of one formula; RenderError if it fails."""
    _require_tex()
    _check_fonts([font])
    lo, _ = _dpi_range(dpi)
    reason = check_formula(formula)
    if reason is None:
        result = _render_chunk([_Item(0, _clean(formula), lo)], font)[0]
        if not isinstance(result, str):
            return result
        reason = result
    raise RenderError(reason)
