"""Render speed of the TeX Live renderer on real cn_math training formulas: formulas/s and success rate.

python benchmarks/render_speed.py --n 10000 --fonts cm --jobs 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from texlens.data.render import render_formulas, summarize_failures

DATA = Path(os.environ.get("TEXLENS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def read_cn_math_train(data: Path, n: int) -> list[str]:
    """The first n formulas of the cn_math train split; malformed index lines and stray indices skipped."""
    formulas = (data / "cn_math" / "im2latex_formulas.norm.lst").read_text(encoding="utf-8").split("\n")
    picked: list[str] = []
    for line in (data / "cn_math" / "im2latex_train_filter.lst").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(formulas):
            continue
        picked.append(formulas[int(parts[1])])
        if len(picked) == n:
            break
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of train formulas")
    parser.add_argument("--fonts", default="cm", help="comma-separated fonts, e.g. cm,times")
    parser.add_argument("--dpi", default="200", help="a DPI or a range lo-hi")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    args = parser.parse_args()

    formulas = read_cn_math_train(args.data, args.n)
    fonts = args.fonts.split(",")
    lo, _, hi = args.dpi.partition("-")
    dpi = (int(lo), int(hi)) if hi else int(lo)
    before = os.times()
    with tempfile.TemporaryDirectory(prefix="texlens-render-bench-") as out:
        report = render_formulas(
            formulas,
            Path(out),
            fonts=fonts,
            dpi=dpi,
            jobs=args.jobs,
            chunk_size=args.chunk_size,
            progress=False,
        )
    after = os.times()
    # CPU seconds of this process and of latex/dvipng: a fair measure on a machine shared with other work.
    cpu = sum(
        getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system")
    )
    attempted = len(formulas) * len(fonts)
    print(f"formulas           {len(formulas)}  (cn_math train, first {args.n})")
    print(f"fonts / dpi / jobs {','.join(fonts)} / {args.dpi} / {args.jobs}  (chunk {args.chunk_size})")
    print(f"images             {len(report.rendered)} of {attempted}")
    print(f"success rate       {100 * len(report.rendered) / max(1, attempted):.2f} %")
    print(f"wall time          {report.seconds:.2f} s")
    print(f"images/s           {report.formulas_per_second:.0f}  (wall clock)")
    print(f"CPU time           {cpu:.2f} s  ->  {len(report.rendered) / cpu:.0f} images per CPU-second")
    print(f"load average       {os.getloadavg()[0]:.1f}  (other work on the machine slows this down)")
    print("failures by reason:")
    for reason, count in summarize_failures(report.failures)[:15]:
        print(f"  {count:6d}  {reason}")


if __name__ == "__main__":
    main()
