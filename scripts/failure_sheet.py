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

    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.1 * len(chosen)), squeeze=False)
    for ax, row in zip(axes[:, 0], chosen, strict=True):
        with Image.open(row["image"]) as image:
            ax.imshow(image.convert("L"), cmap="gray", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        wrap = lambda s: "\n".join(textwrap.wrap(s, 110)) or "(empty)"  # noqa: E731
        ax.set_title(
            f"{Path(row['image']).name}  (edit similarity {float(row['edit_similarity']):.2f})\n"
            f"read:      {wrap(row['prediction'])}\nreference: {wrap(row['reference'])}",
            fontsize=7,
            loc="left",
            family="monospace",
        )
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"{len(chosen)} examples drawn into {args.out}")


if __name__ == "__main__":
    main()
