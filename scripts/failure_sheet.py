"""Draw failure examples for the model card: the input image, what the model read and what it should have read.

    texlens eval --data datasets/val_crohme --errors errors_crohme.csv
    python scripts/failure_sheet.py errors_crohme.csv --out docs/failures_crohme.png [--pick near|far|spread] [--n 6]

Reads the per-sample error CSV of `texlens eval --errors` (worst first). ``--pick spread`` takes examples evenly
across the edit-similarity range (from far off to one symbol wrong), ``near`` the closest misses, ``far`` the worst.
"""

from __future__ import annotations

import argparse
import csv
import textwrap
from pathlib import Path

from PIL import Image


def pick(rows: list[dict], how: str, n: int) -> list[dict]:
    """``n`` rows from the CSV (sorted worst first) chosen as ``how`` says."""
    if how == "far":
        return rows[:n]
    if how == "near":
        return rows[-n:]
    if len(rows) <= n:
        return rows
    return [rows[round(i * (len(rows) - 1) / (n - 1))] for i in range(n)]


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 110)) or "(empty)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("errors_csv", help="CSV written by `texlens eval --errors`")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--n", type=int, default=6, help="examples to draw")
    parser.add_argument("--pick", choices=("spread", "near", "far"), default="spread")
    parser.add_argument("--title", default=None, help="title above the sheet")
    args = parser.parse_args()
    with open(args.errors_csv, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("error")]
    if not rows:
        parser.error(f"{args.errors_csv}: no wrong predictions to draw")
    chosen = pick(rows, args.pick, args.n)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Laid out top-down in inches: each example's three-part caption, then its image under it, so a long caption
    # never runs into the image above (as subplots with fixed heights let it).
    width, line, gap = 10.0, 0.125, 0.2
    blocks = []
    for row in chosen:
        with Image.open(row["image"]) as image:
            grey = image.convert("L")
        caption = (
            f"{Path(row['image']).name}  (edit similarity {float(row['edit_similarity']):.2f})\n"
            f"read:      {_wrap(row['prediction'])}\nreference: {_wrap(row['reference'])}"
        )
        image_h = min(1.6, (width - 0.2) * grey.height / grey.width)
        blocks.append((caption, grey, caption.count("\n") + 1, image_h))
    title_h = 0.4 if args.title else 0.0
    total = title_h + sum(gap + lines * line + 0.05 + image_h for _, _, lines, image_h in blocks) + gap
    fig = plt.figure(figsize=(width, total))
    if args.title:
        fig.suptitle(args.title, fontsize=10, y=1 - 0.15 / total)
    y = total - title_h
    for caption, grey, lines, image_h in blocks:
        y -= gap
        fig.text(0.1 / width, y / total, caption, va="top", ha="left", fontsize=7, family="monospace")
        y -= lines * line + 0.05
        ax = fig.add_axes((0.1 / width, (y - image_h) / total, 1 - 0.2 / width, image_h / total))
        ax.imshow(grey, cmap="gray", aspect="equal")
        ax.set_anchor("W")
        ax.set_xticks([])
        ax.set_yticks([])
        y -= image_h
    fig.savefig(args.out, dpi=110)
    print(f"{len(chosen)} examples drawn into {args.out}")


if __name__ == "__main__":
    main()
