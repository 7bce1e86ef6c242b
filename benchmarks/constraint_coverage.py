"""Check that the syntax constraints never forbid real LaTeX: walk every formula of the built datasets (and of
IM2LATEX-100K validation) through ``LatexConstraint`` with no length to spare, and list the ones it rejects.

    python benchmarks/constraint_coverage.py [--datasets datasets] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from texlens.data.formats import read_dataset
from texlens.decoding import LatexConstraint
from texlens.latex import LatexError, Vocab, normalize

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=str(REPO / "datasets"), help="where `texlens data build` wrote")
    parser.add_argument(
        "--shared", default=str(REPO.parent / "shared" / "data"), help="the shared data folder"
    )
    parser.add_argument("--show", type=int, default=10, help="rejected formulas to print")
    args = parser.parse_args()
    formulas: list[list[str]] = []
    for labels in sorted(Path(args.datasets).glob("*/labels.tsv")):
        formulas += [s.latex.split() for s in read_dataset(labels.parent)[0]]
    im2latex = Path(args.shared) / "im2latex100k" / "val.formulas.norm.txt"
    if im2latex.is_file():
        for line in im2latex.read_text(encoding="utf-8").splitlines():
            try:
                formulas.append(normalize(line).split())
            except LatexError:
                continue
    vocab = Vocab.build(formulas)
    constraint = LatexConstraint(vocab.itos)
    rejected = []
    for tokens in formulas:
        at = constraint.first_rejected(vocab.encode(tokens)[1:])
        if at is not None:
            rejected.append((" ".join(tokens[max(0, at - 6) : at + 1]), " ".join(tokens)))
    print(f"{len(formulas)} formulas, {len(rejected)} rejected ({len(rejected) / max(len(formulas), 1):.3%})")
    for context, formula in rejected[: args.show]:
        print(f"  at '{context}': {formula[:160]}")


if __name__ == "__main__":
    main()
