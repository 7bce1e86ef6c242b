"""Compare training runs step by step from their CSV logs: validation edit similarity per set, side by side.

    python scripts/compare_runs.py "without MLM=runs/rt_nomlm" "with MLM=runs/rt_mlm" --metric edit_similarity,loss \\
        --out docs/mlm_effect.png

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
        "--metric",
        default=METRIC,
        help="validation metrics to compare, comma-separated (e.g. edit_similarity,loss)",
    )
    args = parser.parse_args()
    logs: dict[str, dict[str, dict[int, float]]] = {}
    for spec in args.runs:
        label, _, path = spec.partition("=")
        if not path:
            parser.error(f"{spec!r}: expected LABEL=RUN_DIR")
        logs[label] = read_metrics(Path(path) / "logs")
        if not logs[label]:
            parser.error(f"{path}: no CSV logs under {path}/logs")
    metrics = args.metric.split(",")
    panels = []  # (metric, key, set name)
    for metric in metrics:
        keys = sorted(
            {k for series in logs.values() for k in series if k.startswith("val/") and k.endswith(metric)}
        )
        if not keys:
            parser.error(f"no validation series ends with {metric!r}")
        common = sorted(set.intersection(*(set(series.get(keys[0], {})) for series in logs.values())))
        sets = [k[len("val/") : -len(metric) - 1] or "all sets" for k in keys]
        panels += [(metric, k, name) for k, name in zip(keys, sets, strict=True)]
        print(f"\nvalidation {metric}\n\n| run | step | {' | '.join(sets)} |")
        print(f"|---|---|{'---|' * len(keys)}")
        for step in common:
            for label, series in logs.items():
                cells = " | ".join(
                    f"{series[k][step]:.3f}" if step in series.get(k, {}) else "" for k in keys
                )
                print(f"| {label} | {step + 1} | {cells} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        columns = max(sum(m == metric for m, _, _ in panels) for metric in metrics)
        fig, axes = plt.subplots(
            len(metrics), columns, figsize=(4.5 * columns, 3.4 * len(metrics)), squeeze=False
        )
        for row, metric in enumerate(metrics):
            mine = [(k, name) for m, k, name in panels if m == metric]
            for ax, (key, name) in zip(axes[row], mine, strict=False):
                for label, series in logs.items():
                    steps = sorted(series.get(key, {}))
                    ax.plot([s + 1 for s in steps], [series[key][s] for s in steps], marker=".", label=label)
                ax.set_title(f"{name}: {metric}")
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"\ncurves written to {args.out}")


if __name__ == "__main__":
    main()
