"""Load test of the HTTP API: N real formula images from concurrent clients, on the loopback interface only.

    python benchmarks/load.py [--url http://127.0.0.1:8000] [--model DIR | --tiny] [--n 2000] [--concurrency 16]
                              [--images DIR] [--beam 1] [--time-limit 300]

Without --url it starts `texlens serve` on a free loopback port (with --model, the bundled default, or with --tiny a
tiny random-weight model that measures the serving machinery, not a real model's speed) and stops it afterwards.
Prints requests/s, latency percentiles, errors by status, lost requests (sent, never answered) and the server's
mean batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
from _shared import first_readable, free_port, wait_healthy

SHARED = Path(os.environ.get("TEXLENS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback interface."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tiny_model(directory: Path) -> Path:
    """A tiny random-weight ResNet-Transformer with a vocabulary from real IM2LATEX formulas."""
    import torch

    from texlens.latex import Vocab
    from texlens.models import build_model, save_model

    lines = (SHARED / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").splitlines()
    vocab = Vocab.build([line.split() for line in lines[:300] if line.strip()])
    torch.manual_seed(0)
    return save_model(build_model("resnet-transformer", len(vocab), "tiny"), vocab, directory)


def start_server(model: str | None, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`texlens serve` on a free loopback port; returns the process and its URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "texlens.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model", model] if model else []
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(process, f"{url}/health", "the server (`texlens serve`)")
    return process, url


async def run_load(
    url: str, images: list[bytes], n: int, concurrency: int, beam: int, time_limit: float
) -> dict[str, object]:
    """Send ``n`` requests from ``concurrency`` clients; stop sending at ``time_limit`` seconds."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lost: list[str] = []
    next_index = 0
    started = time.perf_counter()
    deadline = started + time_limit

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < n and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                response = await client.post(
                    "/predict",
                    files={"file": (f"{i}.png", images[i % len(images)], "image/png")},
                    data={"beam": beam},
                )
            except httpx.HTTPError as exc:
                lost.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(max(time_limit, 30.0))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ok_latencies = sorted(latencies)
    return {
        "sent": next_index,
        "not_sent": n - next_index,
        "statuses": statuses,
        "lost": lost,
        "wall": wall,
        "latencies": ok_latencies,
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, nearest rank."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


def main() -> None:
    """Parse arguments, run the load, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (loopback only); default: start one")
    parser.add_argument("--model", help="model directory or bundled name for the server started here")
    parser.add_argument(
        "--tiny", action="store_true", help="serve a tiny random-weight model (serving overhead)"
    )
    parser.add_argument("--n", type=int, default=2000, help="requests to send")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--images", type=Path, default=SHARED / "im2latex100k" / "images_val")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="stop sending after this many seconds"
    )
    args = parser.parse_args()
    if args.n < 1 or args.concurrency < 1:
        parser.error("--n and --concurrency must be positive")

    paths = first_readable(sorted(args.images.glob("*.png")), args.n)
    if not paths:
        parser.error(f"no PNG images in {args.images}")
    images = [p.read_bytes() for p in paths]

    process = None
    tmp = tempfile.TemporaryDirectory()
    try:
        if args.url:
            if not is_loopback(args.url):
                parser.error(
                    f"{args.url} is not a loopback address; this load test only targets this machine"
                )
            url = args.url.rstrip("/")
        else:
            model = str(tiny_model(Path(tmp.name) / "tiny")) if args.tiny else args.model
            process, url = start_server(model, {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        health = httpx.get(f"{url}/health", timeout=10).json()
        print(f"server {url}  model {health['model'].get('model_dir', health['model'])}")
        print(
            f"{args.n} requests, {args.concurrency} clients, {len(images)} distinct IM2LATEX images, beam {args.beam}"
        )
        stats = asyncio.run(run_load(url, images, args.n, args.concurrency, args.beam, args.time_limit))
        after = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        if process is not None:
            process.terminate()
            process.wait(15)
        tmp.cleanup()

    lat = stats["latencies"]
    ok = stats["statuses"].get(200, 0)
    answered = sum(stats["statuses"].values())
    errors = answered - ok
    batches = after["batches"] - health["batches"]
    predicted = after["images"] - health["images"]
    print(
        f"{'answered':>12} {answered}   200 OK: {ok}   errors: {errors} {dict(sorted(stats['statuses'].items()))}"
    )
    print(f"{'lost':>12} {len(stats['lost'])}   not sent (time limit): {stats['not_sent']}")
    print(f"{'wall':>12} {stats['wall']:.1f} s   throughput {answered / stats['wall']:.1f} requests/s")
    print(
        f"{'latency':>12} p50 {percentile(lat, 50) * 1000:.0f} ms   p90 {percentile(lat, 90) * 1000:.0f} ms   "
        f"p99 {percentile(lat, 99) * 1000:.0f} ms   max {(lat[-1] if lat else float('nan')) * 1000:.0f} ms"
    )
    if batches:
        print(
            f"{'batching':>12} {predicted} images in {batches} model calls (mean batch {predicted / batches:.1f})"
        )
    for message in stats["lost"][:5]:
        print(f"{'lost':>12} {message}")


if __name__ == "__main__":
    main()
