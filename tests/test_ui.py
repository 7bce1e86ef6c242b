"""The Streamlit app: run in-process by Streamlit's AppTest, and end to end in headless Chromium.

The model is a tiny random-weight ResNet-Transformer; the tests check that the page reads a real IM2LATEX
image and shows its LaTeX, confidence and history, and that bad files give a message instead of a crash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from test_api import ServerProcess, free_port, make_tiny_model, val_images
from texlens.serve.ui import APP_SCRIPT, ui_command, ui_env

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("ui") / "tiny", shared_data)


@pytest.fixture(scope="module")
def formula_png(shared_data: Path) -> Path:
    return val_images(shared_data, 1)[0]


def _app(monkeypatch: pytest.MonkeyPatch, **env: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("TEXLENS_UI_API", raising=False)
    monkeypatch.setenv("TEXLENS_MAX_TOKENS", "32")  # the random model never says <end>: keep its output short
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=120)


def test_app_reads_uploaded_and_pasted_images(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, formula_png: Path
) -> None:
    at = _app(monkeypatch, TEXLENS_MODEL=str(model_dir))
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "texlens"
    assert not at.code  # nothing read yet

    at.file_uploader(key="upload").set_value((formula_png.name, formula_png.read_bytes(), "image/png"))
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    latex = at.code[0].value
    assert isinstance(latex, str)
    assert at.metric[0].label == "Confidence" and at.metric[0].value.endswith("%")
    assert len(at.session_state["history"]) == 1
    [attention] = [e for e in at.expander if "attention" in e.label]
    assert attention.get("image"), "no attention heat map"

    # A pasted screenshot arrives through the chat input's file attachment.
    at.chat_input(key="paste").upload("pasted.png", formula_png.read_bytes(), "image/png").set_value("")
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["current"]["source"] == "pasted"
    # Same pixels, same beam: the cached result is shown, the history does not grow.
    assert len(at.session_state["history"]) == 1

    # Another beam width is another reading (the default, DEFAULT_BEAM, is a beam: greedy is 1).
    at.slider(key="beam").set_value(1)
    at.run()
    assert not at.exception, at.exception
    assert len(at.session_state["history"]) == 2


def test_app_reports_bad_file(monkeypatch: pytest.MonkeyPatch, model_dir: Path, formula_png: Path) -> None:
    at = _app(monkeypatch, TEXLENS_MODEL=str(model_dir))
    at.run()
    truncated = formula_png.read_bytes()[:200]
    at.file_uploader(key="upload").set_value(("cut.png", truncated, "image/png"))
    at.run()
    assert not at.exception, at.exception
    assert at.error and "truncated" in at.error[0].value
    assert at.session_state["history"][0]["error"]


def test_app_uses_a_running_api(monkeypatch: pytest.MonkeyPatch, model_dir: Path, formula_png: Path) -> None:
    server = ServerProcess(model_dir)
    try:
        at = _app(monkeypatch, TEXLENS_UI_API=server.url)
        at.run()
        assert not at.exception, at.exception
        at.file_uploader(key="upload").set_value((formula_png.name, formula_png.read_bytes(), "image/png"))
        at.run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        assert isinstance(at.code[0].value, str)
        assert httpx.get(f"{server.url}/health").json()["images"] >= 1  # the API did the reading
    finally:
        server.close()


def _drawing_canvas(driver, by):
    """The canvas that takes mouse strokes; streamlit-drawable-canvas keeps it in a shadow root."""
    for host in driver.find_elements(by.CSS_SELECTOR, "div"):
        if driver.execute_script("return !!(arguments[0].shadowRoot)", host):
            for canvas in host.shadow_root.find_elements(by.CSS_SELECTOR, "canvas.upper-canvas"):
                if canvas.size["width"] > 0:
                    return canvas
    return False


def _idle(driver, by) -> bool:
    """Whether the app has no script run in progress (Streamlit shows a running icon while it has)."""
    running = "[data-testid=stStatusWidgetRunningIcon], [data-testid=stStatusWidgetRunningManIcon]"
    return not driver.find_elements(by.CSS_SELECTOR, running)


def _click(driver, by, selector: str, label: str) -> bool:
    """Click the enabled element matching ``selector`` with this text; False if there is none yet (to wait on)."""
    for element in driver.find_elements(by.CSS_SELECTOR, selector):
        if element.text == label and element.is_enabled():
            element.click()
            return True
    return False


def _click_until(driver, by, selector: str, label: str, done, timeout: float = 120, again_after: float = 10):
    """Click the element until ``done(driver)`` holds, and return what it returned.

    A click that lands while Streamlit swaps the page for a rerun can be lost; when the app has gone idle without
    ``done`` holding, ``again_after`` seconds after the last click, click again (reading twice is harmless).
    """
    from selenium.common.exceptions import StaleElementReferenceException

    deadline, clicked = time.monotonic() + timeout, -float("inf")
    while time.monotonic() < deadline:
        try:
            result = done(driver)
            if result:
                return result
            if (
                time.monotonic() - clicked > again_after
                and _idle(driver, by)
                and _click(driver, by, selector, label)
            ):
                clicked = time.monotonic()
        except StaleElementReferenceException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"clicking {label!r} had no effect within {timeout:.0f} s")


CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


@pytest.mark.slow
def test_browser_end_to_end(model_dir: Path, formula_png: Path, tmp_path: Path) -> None:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(
            "headless chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver import ActionChains, Chrome, ChromeOptions
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    assert selenium
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w+b")  # noqa: SIM115 - closed below
    started = time.monotonic()
    app = subprocess.Popen(
        ui_command(port, model=str(model_dir)),
        env={**ui_env(model=str(model_dir)), "OMP_NUM_THREADS": "1", "TEXLENS_MAX_TOKENS": "32"},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    options = ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.monotonic() + 60
        while True:
            assert app.poll() is None, f"streamlit exited:\n{log.name}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "streamlit did not start within 60 s"
            time.sleep(0.2)
        driver = Chrome(service=Service(chromedriver), options=options)
        driver.get(f"http://127.0.0.1:{port}")
        # Streamlit redraws elements on every rerun: a found element may go stale before it is used.
        wait = WebDriverWait(driver, 120, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        page_s = time.monotonic() - started
        print(f"page usable {page_s:.1f} s after `streamlit run` started")
        assert page_s < 30, f"the page took {page_s:.1f} s to appear"

        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(formula_png))
        wait.until(
            lambda d: f"Read from {formula_png.name} (uploaded)" in d.find_element(By.TAG_NAME, "body").text
        )
        code = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=stCode] code"))
        )
        wait.until(lambda d: "History" in d.find_element(By.TAG_NAME, "body").text)
        time.sleep(1.0)  # let KaTeX and the image finish drawing before the screenshot
        shot = tmp_path / "ui.png"
        driver.save_screenshot(str(shot))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "ui.png")
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "Confidence" in text and "History" in text
        assert code.get_attribute("textContent") is not None
        assert "Traceback" not in text and "Error" not in text.split("History")[0]

        # Draw a formula with the mouse on the canvas (streamlit-drawable-canvas) and read it.
        canvas = _click_until(driver, By, "[role=tab]", "Draw", lambda d: _drawing_canvas(d, By))
        strokes = ActionChains(driver).move_to_element_with_offset(canvas, -150, 0).click_and_hold()
        for k in range(24):
            strokes.move_by_offset(10, 8 if k % 2 else -8)
        strokes.release().perform()
        ActionChains(driver).move_to_element_with_offset(canvas, -60, -40).click_and_hold().move_by_offset(
            0, 80
        ).release().perform()
        # Each stroke sends the drawing and reruns the script; click once those reruns are over, and again if
        # the click was lost in a rerun.
        wait.until(lambda d: _idle(d, By))
        _click_until(
            driver,
            By,
            "button",
            "Read the drawing",
            lambda d: "Read from drawing.png (drawn)" in d.find_element(By.TAG_NAME, "body").text,
        )
        wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=stCode] code"))
        )
        time.sleep(1.0)
        driver.save_screenshot(str(tmp_path / "ui_draw.png"))
        shutil.copy(tmp_path / "ui_draw.png", ARTIFACTS / "ui_draw.png")
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        if driver is not None:
            driver.quit()
        app.terminate()
        try:
            app.wait(15)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(10)
        log.close()
        if os.environ.get("TEXLENS_KEEP_LOGS"):
            shutil.copy(tmp_path / "streamlit.log", ARTIFACTS / "streamlit.log")
