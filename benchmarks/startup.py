"""How long a person waits after starting `texlens serve` and `texlens ui` (the README's commands, bundled model).

    python benchmarks/startup.py [--model DIR] [--repeat 3]

serve: seconds from starting the command until ``GET /health`` answers 200, and until the first ``POST /predict``
of a bundled example answers. ui: seconds from starting `texlens ui` until headless Chromium (Debian's
``/usr/bin/chromium`` via Selenium) shows the page's file uploader, and until an uploaded example's LaTeX is on
the page. Each figure is the median of ``--repeat`` cold starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _shared import free_port, wait_healthy

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "texlens" / "examples" / "quadratic.png"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


def texlens_command(*args: str) -> list[str]:
    exe = shutil.which("texlens")
    return [exe, *args] if exe else [sys.executable, "-m", "texlens.cli", *args]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def time_serve(model: str | None) -> tuple[float, float]:
    port = free_port()
    args = ["serve", "--port", str(port)] + (["--model", model] if model else [])
    started = time.monotonic()
    proc = subprocess.Popen(texlens_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, f"{url}/health", "texlens serve", poll=0.05)
        health = time.monotonic() - started
        with EXAMPLE.open("rb") as f:
            response = httpx.post(
                f"{url}/predict", files={"file": (EXAMPLE.name, f, "image/png")}, timeout=120
            )
        response.raise_for_status()
        return health, time.monotonic() - started
    finally:
        stop(proc)


def time_ui(model: str | None) -> tuple[float, float]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver import Chrome, ChromeOptions
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise SystemExit("needs Debian's chromium and chromium-driver")
    options = ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = Chrome(
        service=Service(chromedriver), options=options
    )  # the browser is up before the clock starts
    port = free_port()
    args = ["ui", "--port", str(port)] + (["--model", model] if model else [])
    with tempfile.TemporaryDirectory() as cwd:
        started = time.monotonic()
        proc = subprocess.Popen(
            texlens_command(*args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=os.environ,
        )
        try:
            wait_healthy(proc, f"http://127.0.0.1:{port}/_stcore/health", "texlens ui", poll=0.05)
            driver.get(f"http://127.0.0.1:{port}")
            wait = WebDriverWait(
                driver, 120, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
            )
            wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
            page = time.monotonic() - started
            driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(EXAMPLE))
            wait.until(lambda d: f"Read from {EXAMPLE.name}" in d.find_element(By.TAG_NAME, "body").text)
            return page, time.monotonic() - started
        finally:
            driver.quit()
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-ui", action="store_true")
    opts = parser.parse_args()

    rows = [
        (
            "texlens serve",
            "GET /health = 200",
            "first /predict answered",
            [time_serve(opts.model) for _ in range(opts.repeat)],
        )
    ]
    if not opts.skip_ui:
        rows.append(
            (
                "texlens ui",
                "page with uploader in Chromium",
                "uploaded example's LaTeX shown",
                [time_ui(opts.model) for _ in range(opts.repeat)],
            )
        )
    print(f"cold starts: {opts.repeat} each; load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<15}{'ready when':<34}{'median s':>9}  {'then':<34}{'median s':>9}")
    for command, first, second, times in rows:
        a = statistics.median(t[0] for t in times)
        b = statistics.median(t[1] for t in times)
        print(f"{command:<15}{first:<34}{a:>9.1f}  {second:<34}{b:>9.1f}")


if __name__ == "__main__":
    main()
