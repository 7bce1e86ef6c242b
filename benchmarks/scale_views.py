"""Which views of an image are worth reading: other glyph heights, and ensembles of views.

    python benchmarks/scale_views.py [--model DIR] [--n 200] [--beam 1] [--factors 1.12,0.9,1.25] [--ensembles 0+2,0+2+3,0+1+2]
        [--save reads.npz]

Reads the first ``--n`` images of the tuning split (IM2LATEX held back from number 2,000, ``cn_math`` in Euler
from number 5,000) and of CROHME 2014 *train* (the handwriting stand-in; the model has trained on it, so read its
row as an upper bound) in several views: 0 = the router's scale, 1 = the other scale (printed / handwriting), then
the router's scale times each of ``--factors``. It prints each view's exact match, the exact match of keeping the
most confident read of some views (``surest of``), and of decoding an ensemble of views (``--ensembles``: the
log-probabilities of the views averaged at every step, so all of them are decoded together), and the second-read
policies (``views 0,1,2``: the views in turn while unsure, texlens before ensembles; ``texlens now``: print read
as ensemble 0+2, then view 1 if unsure, handwriting as before; decodings per image in brackets). This is how
``texlens.predictor.SECOND_READ_ZOOM`` and the ensemble reads for print were found; ``benchmarks/second_read.py``
chose the threshold. ``--save`` keeps every read's correctness and confidence per image (numpy .npz).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from _shared import read_in_turn, tuning_parser, tuning_split

from texlens.data.formats import read_dataset
from texlens.evaluate import canonical_tokens
from texlens.image import ImageError, InkCrop, load_image
from texlens.predictor import SECOND_READ_BELOW, Predictor


def decode(predictor: Predictor, views: list[list[np.ndarray]], beam: int) -> list[tuple[list[str], float]]:
    """(tokens, confidence) per image; each image's list of views is decoded as one ensemble (one view: alone)."""
    return [(r.tokens, r.confidence) for r in predictor.decode(views, beam=beam)]


def main() -> None:
    """Read the sets in every view and ensemble, print the exact matches."""
    parser = tuning_parser(__doc__)
    parser.set_defaults(n=200)
    parser.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy)")
    parser.add_argument(
        "--factors", default="1.12,0.9,1.25", help="zoom factors on the router's glyph height"
    )
    parser.add_argument("--ensembles", default="0+2,0+2+3,0+1+2", help="views decoded together, e.g. 0+2")
    parser.add_argument("--save", help="write every read's correctness and confidence per image to this .npz")
    args = parser.parse_args()
    factors = [float(f) for f in args.factors.split(",") if f]
    ensembles = [[int(v) for v in e.split("+")] for e in args.ensembles.split(",") if e]

    predictor = Predictor(args.model)
    if predictor.router is None or predictor.preprocess_config.handwriting_glyph_height is None:
        sys.exit(
            f"{predictor.model_dir}: the model reads one scale only (no router or no handwriting height)"
        )
    cfg = predictor.preprocess_config
    sets = dict(tuning_split(args.datasets, args.n))
    sets["CROHME 2014 train (seen)"] = read_dataset(Path(args.datasets) / "train_crohme")[0][: args.n]
    saved: dict[str, np.ndarray] = {}
    for name, samples in sets.items():
        views, refs, called = [], [], []
        for sample in samples:
            try:
                image = load_image(sample.image)
                (own, hw, _), (other, _, _) = predictor.views(image)[:2]
                scale = cfg.for_handwriting() if hw else cfg
                ink = InkCrop.of(image)
                zoomed = [
                    ink.scaled(replace(scale, target_glyph_height=scale.target_glyph_height * f))
                    for f in factors
                ]
            except ImageError as exc:
                print(f"skipped {sample.image}: {exc}", file=sys.stderr)
                continue
            views.append([own, other, *zoomed])
            refs.append(sample.latex.split())
            called.append(bool(hw))
        reads = {
            f"view {j}": decode(predictor, [[v[j]] for v in views], args.beam) for j in range(len(views[0]))
        }
        for combo in ensembles:
            reads["ensemble " + "+".join(map(str, combo))] = decode(
                predictor, [[v[j] for j in combo] for v in views], args.beam
            )
        ok = {
            k: np.array([canonical_tokens(t) == r for (t, _), r in zip(v, refs, strict=True)])
            for k, v in reads.items()
        }
        conf = {k: np.array([c for _, c in v]) for k, v in reads.items()}
        if args.save:
            key = name.split(" ")[0]
            saved[f"{key}/width"] = np.array([v[0].shape[1] for v in views])
            saved[f"{key}/handwritten"] = np.array(called)
            saved[f"{key}/tokens"] = np.array([len(t) for t, _ in reads["view 0"]])
            for k in reads:
                saved[f"{key}/{k}/ok"], saved[f"{key}/{k}/conf"] = ok[k], conf[k]
        row = {k: f"{v.mean():.1%}" for k, v in ok.items()}
        singles = [f"view {j}" for j in range(len(views[0]))]
        for size in range(2, len(singles) + 1):
            keys = singles[:size]
            pick = np.argmax(np.stack([conf[k] for k in keys]), 0)
            row["surest of " + ",".join(k[-1] for k in keys)] = (
                f"{np.stack([ok[k] for k in keys])[pick, np.arange(len(refs))].mean():.1%}"
            )
        # Second-read policies: views 0, 1, 2 in turn while the surest read is below SECOND_READ_BELOW (texlens
        # before ensembles), and texlens now (print: ensemble 0+2, then view 1; handwriting as before).
        # (Decodings per image in brackets.) View 2 is the first --factors zoom; SECOND_READ_ZOOM for texlens's.
        if len(singles) > 2:
            cost = {key: len(key.split(" ")[1].split("+")) for key in reads}  # "ensemble 0+2": two views
            before_ok, before_n = read_in_turn(
                ok, conf, ["view 0", "view 1", "view 2"], SECOND_READ_BELOW, cost
            )
            row[f"views 0,1,2 (< {SECOND_READ_BELOW})"] = f"{before_ok.mean():.1%} ({before_n.mean():.2f})"
            if "ensemble 0+2" in ok:
                hw = np.array(called)
                print_ok, print_n = read_in_turn(
                    ok, conf, ["ensemble 0+2", "view 1"], SECOND_READ_BELOW, cost
                )
                now_ok, now_n = np.where(hw, before_ok, print_ok), np.where(hw, before_n, print_n)
                row["texlens now"] = f"{now_ok.mean():.1%} ({now_n.mean():.2f})"
        print(f"{name} ({len(refs)} images, beam {args.beam}, factors {factors}):")
        for key, value in row.items():
            print(f"  {key:>20}: {value}")
    if args.save:
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
