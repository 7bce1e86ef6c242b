"""Words in formulas: how often a model reads the upright words of a formula (``\\mathrm { f o r }``,
``E _ { \\mathrm { k i n } }``) letter for letter.

    python benchmarks/words.py [--model DIR] [--n 300] [--seed 1000]
    python benchmarks/words.py --reported      # real words on the reported IM2LATEX images instead; never tune on it

Two tables, both on the tuning split (validation images and formulas that no reported figure uses):

* **Real words**: every IM2LATEX tuning image whose reference has an upright word of three letters or more
  (the argument of ``\\mathrm``, ``\\text``, ``\\textrm`` or ``\\operatorname``; operator names such as
  ``exp`` count). "Words read" is the share whose reading has every such word of the reference.
* **Made-up words**: ``--n`` cn_math and ``--n`` IM2LATEX tuning formulas with words added the way
  ``texlens data build`` adds them to ``train_words`` (``texlens.data.synth.synthesize_words``; a different
  seed), rendered with TeX in Computer Modern at 200 dpi. Mostly words no training formula has, so a model
  must read them letter by letter: "words read" is the share whose reading has every upright word of the
  formula (the added ones, and the few its base had: mostly operator names).

Greedy, second reads on, as users get them. ``--reported`` counts real words on the first 1,000 held-back IM2LATEX
images (the images the model card reports) and skips the made-up words: a figure to report, not to choose on.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
from _shared import tuning_parser, tuning_split
from rich.console import Console
from rich.table import Table

from texlens.data.formats import read_dataset
from texlens.data.render import render_many_pixels
from texlens.data.synth import synthesize_words, text_words
from texlens.latex import to_latex
from texlens.predictor import Predictor, resolve_model_dir


def long_words(tokens: list[str]) -> Counter:
    """Upright words of three letters or more."""
    return Counter(w for w in text_words(tokens) if len(w) >= 3)


def has_words(reading: list[str], wanted: Counter) -> bool:
    """Whether ``reading`` has every word of ``wanted`` (as often)."""
    return not wanted - Counter(text_words(reading))


def row(predictor: Predictor, images: list, references: list[list[str]], wanted: list[Counter]) -> list[str]:
    readings = [p.tokens for p in predictor.predict_paths(images, beam=1)]
    read = [has_words(r, w) for r, w in zip(readings, wanted, strict=True)]
    exact = [r == ref for r, ref in zip(readings, references, strict=True)]
    return [f"{len(images)}", f"{np.mean(read):.1%}", f"{np.mean(exact):.1%}"]


def main() -> None:
    parser = tuning_parser(__doc__)
    parser.add_argument("--seed", type=int, default=1000, help="seed of the made-up words")
    parser.add_argument(
        "--reported", action="store_true", help="real words on the reported IM2LATEX images only"
    )
    args = parser.parse_args()
    predictor = Predictor(resolve_model_dir(args.model))
    split = None if args.reported else tuning_split(args.datasets, None)
    console = Console(width=None if sys.stdout.isatty() else 140)

    if args.reported:
        folder, first = Path(args.datasets) / "val_im2latex", 1000
        where = f"the first {first} held-back IM2LATEX images (reported)"
        images = read_dataset(folder)[0][:first]
    else:
        where, images = "IM2LATEX tuning images", split["im2latex held back"]
    real = Table(title=f"Real words, {where} (model: {args.model or 'bundled'}, greedy)")
    for column in ("formulas with a word", "words read", "exact"):
        real.add_column(column, justify="right")
    samples = [(s, words) for s in images if (words := long_words(s.latex.split()))]
    real.add_row(
        *row(
            predictor,
            [s.image for s, _ in samples],
            [s.latex.split() for s, _ in samples],
            [words for _, words in samples],
        )
    )
    console.print(real)
    if split is None:
        return

    made_up = Table(title="Made-up words added to tuning formulas, Computer Modern 200 dpi")
    for column in ("data", "formulas", "rendered", "words read", "exact"):
        made_up.add_column(column, justify="right")
    for k, (name, set_samples) in enumerate(split.items()):
        bases = [s.latex for s in set_samples[: args.n]]
        formulas = synthesize_words(bases, args.n, seed=args.seed + k)
        images = render_many_pixels([to_latex(f) for f in formulas], font="cm", dpi=200)
        kept = [(f, im) for f, im in zip(formulas, images, strict=True) if im is not None]
        if not kept:
            sys.exit("TeX rendered none of the formulas; is TeX Live installed?")
        wanted = [Counter(text_words(f.split())) for f, _ in kept]
        made_up.add_row(
            name,
            str(len(formulas)),
            *row(predictor, [im for _, im in kept], [f.split() for f, _ in kept], wanted),
        )
    console.print(made_up)


if __name__ == "__main__":
    main()
