"""How a process's memory grows with batches of ever-new shapes, by the size of oneDNN's primitive cache.

    python benchmarks/memory.py [--caps 1024,256] [--batches 300] [--mode train|decode|both] [--fp32] [--fixed]

PyTorch's CPU kernels (oneDNN) keep a compiled "primitive" per distinct shape, up to
ONEDNN_PRIMITIVE_CACHE_CAPACITY of them (1024 unless set), each with its own buffers. Formula images come in
every size and decoding meets every prefix length, so a training run or a server meets new shapes for hours;
``import texlens`` lowers the default to texlens.ONEDNN_CACHE (an environment variable set beforehand wins).

Each cap runs in a fresh process (the variable is read once, at the first primitive): ``--batches`` batches of the
default architecture (random weights, so that every decoding runs to its length limit), shapes drawn with a fixed
seed as the training sampler makes them (height 32-160, width 64-800, at most 131,072 pixels a batch), each a
training step (AdamW, bf16 autocast where the CPU computes bf16 natively) and/or a greedy decoding of 20-120
tokens. ``--fixed``: every batch 32 images of 64x256 with 60 tokens instead (what a cache of that size costs in
speed where shapes repeat). Prints the resident memory after 20 batches and at the end, and the milliseconds per
batch after the 20th.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def child(batches: int, mode: str, fp32: bool, trim_every: int, mmap_threshold: int, fixed: bool) -> None:
    import ctypes
    import random
    import time

    import torch

    from texlens.decoding import greedy_decode
    from texlens.models.registry import build_model
    from texlens.training import _cpu_has_fast_bf16

    libc = ctypes.CDLL("libc.so.6")
    if mmap_threshold:  # M_MMAP_THRESHOLD (-3): larger blocks are mapped, and unmapped when freed
        libc.mallopt(-3, mmap_threshold)
    torch.manual_seed(0)
    rng = random.Random(0)
    torch.set_num_threads(1)
    vocab = 600
    model = build_model("resnet-transformer", vocab, "default")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = not fp32 and _cpu_has_fast_bf16()

    def rss_gb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    warm = started = 0.0
    for step in range(batches):
        if step == 20:
            warm, started = rss_gb(), time.perf_counter()
        height, width = (64, 256) if fixed else (rng.randrange(32, 161, 16), rng.randrange(64, 801, 16))
        n = 32 if fixed else max(1, min(32, 131072 // (height * width)))
        images = torch.rand(n, 1, height, width)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if mode in ("train", "both"):
                length = 60 if fixed else rng.randint(5, 150)
                tgt = torch.randint(1, vocab, (n, length + 1))
                model.train()
                logits = model(images, tgt[:, :-1])
                loss = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, vocab), tgt[:, 1:].reshape(-1)
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            if mode in ("decode", "both"):
                model.eval()
                with torch.no_grad():
                    greedy_decode(
                        model, images, max_len=60 if fixed else rng.randint(20, 120), constraints=False
                    )
        if trim_every and step % trim_every == trim_every - 1:
            libc.malloc_trim(0)
    ms = (time.perf_counter() - started) / max(1, batches - 20) * 1000
    print(f"{warm:.2f} {rss_gb():.2f} {ms:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--caps", default="1024,256", help="comma list of ONEDNN_PRIMITIVE_CACHE_CAPACITY values"
    )
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--mode", default="both", choices=["train", "decode", "both"])
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--fixed", action="store_true", help="one shape for every batch")
    parser.add_argument("--trim-every", type=int, default=0, help="malloc_trim(0) every N batches (glibc)")
    parser.add_argument("--mmap-threshold", type=int, default=0, help="glibc M_MMAP_THRESHOLD in bytes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.batches, args.mode, args.fp32, args.trim_every, args.mmap_threshold, args.fixed)
        return
    print(
        f"{args.batches} batches{' of one shape' if args.fixed else ''}, {args.mode}, "
        f"{'fp32' if args.fp32 else 'bf16 where native'}, "
        f"malloc_trim every {args.trim_every or '-'}, mmap threshold {args.mmap_threshold or 'glibc default'}"
    )
    command = [sys.executable, __file__, "--child", "--batches", str(args.batches), "--mode", args.mode]
    command += ["--trim-every", str(args.trim_every), "--mmap-threshold", str(args.mmap_threshold)]
    command += [flag for flag, on in (("--fixed", args.fixed), ("--fp32", args.fp32)) if on]
    print("| cache capacity | RSS after 20 batches (GB) | RSS at the end (GB) | growth (GB) | ms / batch |")
    print("|---|---|---|---|---|")
    for cap in args.caps.split(","):
        env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": cap}
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.split()
        warm, end, ms = float(out[-3]), float(out[-2]), out[-1]
        print(f"| {cap} | {warm:.2f} | {end:.2f} | {end - warm:+.2f} | {ms} |", flush=True)


if __name__ == "__main__":
    main()
