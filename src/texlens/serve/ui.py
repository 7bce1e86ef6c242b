"""``texlens ui``: start the Streamlit web app (``ui_app.py``) with the model or API it should use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

APP_SCRIPT = Path(__file__).with_name("ui_app.py")


def ui_command(
    port: int = 8501, api: str | None = None, model: str | None = None, address: str = "127.0.0.1"
) -> list[str]:
    """The ``streamlit run`` command line that serves the app headless on ``address``:``port``."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--server.address", address]
    # No usage statistics leave the machine; no developer menu ("Deploy") for people using the app.
    cmd += ["--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    extra = [*(["--api", api] if api else []), *(["--model", str(model)] if model else [])]
    return cmd + (["--", *extra] if extra else [])


def ui_env(api: str | None = None, model: str | None = None) -> dict[str, str]:
    """The environment for the app: TEXLENS_UI_API / TEXLENS_MODEL tell it what to use."""
    env = dict(os.environ)
    if api:
        env["TEXLENS_UI_API"] = api
    if model:
        env["TEXLENS_MODEL"] = str(model)
    return env


def launch(
    port: int = 8501, api: str | None = None, model: str | None = None, address: str = "127.0.0.1"
) -> int:
    """Run the Streamlit app until it is stopped (Ctrl+C); returns its exit status.

    It listens on the loopback interface only, unless ``address`` says otherwise (``"0.0.0.0"``: the network).
    """
    process = subprocess.Popen(ui_command(port, api, model, address), env=ui_env(api, model))
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) of `texlens ui` stops the Streamlit server too, instead of leaving it running.
        signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    using = f"API {api}" if api else f"model {model or 'default'}"
    print(f"texlens ui: http://{address}:{port}  ({using})", flush=True)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
