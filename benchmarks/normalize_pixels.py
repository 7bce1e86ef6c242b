"""Does normalisation keep a formula's look? Render original and canonical form, compare pixels.

    python benchmarks/normalize_pixels.py --n 1000

Prints, per corpus (cn_math validate, IM2LATEX validation), how many formulas render pixel-identically.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from texlens.data.render import render_many_pixels
from texlens.latex import LatexError, normalize, to_latex

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus(name: str, n: int, shared: Path = SHARED) -> list[str]:
    """The first ``n`` formulas of a real corpus (cn_math validate split or IM2LATEX validation)."""
    if name == "cn_math":
        lines = (shared / "cn_math" / "im2latex_formulas.norm.lst").read_text(
            encoding="utf-8", errors="replace"
        )
        formulas = lines.splitlines()
        out = []
        for row in (shared / "cn_math" / "im2latex_validate_filter.lst").read_text().splitlines():
            parts = row.split()
            if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < len(formulas):
                if formulas[int(parts[1])].strip():
                    out.append(formulas[int(parts[1])])
        return out[:n]
    lines = (shared / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip()][:n]


def compare(formulas: list[str]) -> dict[str, object]:
    """Render each formula and its canonical form; count pixel-identical pairs among those that render."""
    canon = []
    for f in formulas:
        try:
            canon.append(to_latex(normalize(f)))
        except LatexError:
            canon.append(None)
    pairs = [(f, c) for f, c in zip(formulas, canon, strict=True) if c is not None]
    originals = render_many_pixels([f for f, _ in pairs])
    canonicals = render_many_pixels([c for _, c in pairs])
    rendered = same = 0
    different = []
    for (f, c), a, b in zip(pairs, originals, canonicals, strict=True):
        if a is None:
            continue  # TeX rejects the original: nothing to compare
        rendered += 1
        if b is not None and a.shape == b.shape and (a == b).all():
            same += 1
        else:
            different.append((f, c))
    return {
        "formulas": len(formulas),
        "unparsed": len(formulas) - len(pairs),
        "rendered": rendered,
        "identical": same,
        "rate": same / max(rendered, 1),
        "different": different,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="formulas per corpus")
    ap.add_argument("--show", type=int, default=5, help="differing examples to print")
    args = ap.parse_args()
    total_same = total = 0
    for name in ("cn_math", "im2latex"):
        t = time.time()
        r = compare(corpus(name, args.n))
        total_same += r["identical"]
        total += r["rendered"]
        print(
            f"{name:9s} {r['formulas']} formulas, {r['unparsed']} unparsable, {r['rendered']} render, "
            f"{r['identical']} pixel-identical ({100 * r['rate']:.2f} %) [{time.time() - t:.0f} s]"
        )
        for f, c in r["different"][: args.show]:
            print(f"    {f}\n -> {c}")
    print(f"overall: {total_same}/{total} = {100 * total_same / max(total, 1):.2f} % pixel-identical")


if __name__ == "__main__":
    main()
