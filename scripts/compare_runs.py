"""Compare training runs step by step from their CSV logs: validation edit similarity per set, side by side.

    python scripts/compare_runs.py "without MLM=runs/rt_nomlm" "with MLM=runs/rt_mlm" --out docs/mlm_effect.png

Prints a Markdown table of each run's validation figures at the steps every run validated at (equal steps are
equal compute: the runs share the config) and draws them as curves, one panel per validation set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from texlens.training import read_metrics

METRIC = "edit_similarity"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (a `texlens train` output_dir)")
    parser.add_argument("--out", default=None, help="PNG to draw the curves into")
    parser.add_argument(
        "--metric", default=METRIC, help="validation metric to compare (default: edit_similarity)"
    )
    args = parser.parse_args()
    runs: dict[str, dict[str, dict[int, float]]] = {}
    for spec in args.runs:
        label, _, path = spec.partition("=")
        if not path:
            parser.error(f"{spec!r}: expected LABEL=RUN_DIR")
        series = read_metrics(Path(path) / "logs")
        if not series:
            parser.error(f"{path}: no CSV logs under {path}/logs")
        runs[label] = {k: v for k, v in series.items() if k.startswith("val/") and k.endswith(args.metric)}
    keys = sorted({k for series in runs.values() for k in series})
    common = sorted(set.intersection(*(set(series.get(keys[0], {})) for series in runs.values())))
    sets = [k[len("val/") : -len(args.metric) - 1] or "all sets" for k in keys]
    print(f"| run | step | {' | '.join(sets)} |")
    print(f"|---|---|{'---|' * len(keys)}")
    for step in common:
        for label, series in runs.items():
            cells = " | ".join(f"{series[k][step]:.3f}" if step in series.get(k, {}) else "" for k in keys)
            print(f"| {label} | {step + 1} | {cells} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
        for ax, key, name in zip(axes[0], keys, sets, strict=True):
            for label, series in runs.items():
                steps = sorted(series.get(key, {}))
                ax.plot([s + 1 for s in steps], [series[key][s] for s in steps], marker=".", label=label)
            ax.set_title(f"{name}: {args.metric}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"curves written to {args.out}")


if __name__ == "__main__":
    main()
