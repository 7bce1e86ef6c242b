"""The HTTP API, tested for real: `texlens serve` in a subprocess on a loopback port, driven over HTTP.

The model is a tiny random-weight ResNet-Transformer (its LaTeX is garbage): the tests check statuses and
the shape of the answers, good input and the whole bad-input suite, alone and all at once.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = httpx.Timeout(120.0)

# --------------------------------------------------------------------------------------------------
# Helpers (the UI tests import them too)
# --------------------------------------------------------------------------------------------------


def make_tiny_model(directory: Path, shared_data: Path) -> Path:
    """Save a tiny random-weight ResNet-Transformer with a vocabulary built from real IM2LATEX formulas."""
    import torch

    from texlens.latex import Vocab
    from texlens.models import build_model, save_model

    formulas = (
        (shared_data / "im2latex100k" / "val.formulas.norm.txt").read_text(encoding="utf-8").splitlines()
    )
    vocab = Vocab.build([line.split() for line in formulas[:300] if line.strip()])
    torch.manual_seed(0)
    model = build_model("resnet-transformer", len(vocab), "tiny")
    return save_model(model, vocab, directory)


def val_images(shared_data: Path, n: int) -> list[Path]:
    """The first ``n`` IM2LATEX-100K validation images (by name)."""
    images = sorted((shared_data / "im2latex100k" / "images_val").glob("*.png"))
    return images[:n]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (its data does not fill them)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


class ServerProcess:
    """``texlens serve`` in a subprocess on a free loopback port; stopped on ``close``."""

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, timeout: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(model_dir.parent / f"server-{self.port}.log", "w+b")  # noqa: SIM115 - closed in close()
        cmd = [sys.executable, "-m", "texlens.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--model", str(model_dir)]
        # Short outputs keep the random model's decoding (which never says <end>) quick.
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TEXLENS_MAX_TOKENS": "32", **(env or {})}
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"server did not answer /health within {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        """Everything the server printed so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def peak_rss_kb(self) -> int:
        """The server process's peak resident memory (VmHWM), in kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("VmHWM not found")

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serve") / "tiny", shared_data)


@pytest.fixture(scope="module")
def server(model_dir: Path):
    proc = ServerProcess(model_dir)
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def good_png(shared_data: Path) -> bytes:
    return val_images(shared_data, 1)[0].read_bytes()


def _gray_png(width: int, height: int, ink: bool = True) -> bytes:
    """A real PNG of the given size, with a black bar on white when ``ink``."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (width, height), 255)
    if ink:
        ImageDraw.Draw(image).rectangle((width // 4, height // 3, 3 * width // 4, 2 * height // 3), fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bad_inputs(good_png: bytes) -> dict[str, tuple[dict, tuple[int, ...], str]]:
    """name -> (httpx request arguments for POST /predict, allowed statuses, a word the message must hold)."""
    minimal_pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    return {
        "empty body": ({}, (422,), "empty"),
        "zero-byte file": ({"files": {"file": ("f.png", b"", "image/png")}}, (422,), "empty"),
        "text file": ({"files": {"file": ("notes.txt", b"x^2 + y^2 = z^2\n", "text/plain")}}, (415,), "text"),
        "truncated png": (
            {"files": {"file": ("cut.png", good_png[: len(good_png) // 2], "image/png")}},
            (422,),
            "truncated",
        ),
        "minimal pdf": ({"files": {"file": ("doc.pdf", minimal_pdf, "application/pdf")}}, (415,), "PDF"),
        "1x1 image": (
            {"files": {"file": ("dot.png", _gray_png(1, 1, ink=False), "image/png")}},
            (422,),
            "small",
        ),
        "blank image": (
            {"files": {"file": ("blank.png", _gray_png(64, 32, ink=False), "image/png")}},
            (422,),
            "blank",
        ),
        "20000x20000 declared": (
            {"files": {"file": ("bomb.png", png_declaring(20000, 20000), "image/png")}},
            (413, 422),
            "large",
        ),
        "wrong content type": (
            {"content": good_png, "headers": {"content-type": "text/plain"}},
            (415,),
            "Content-Type",
        ),
        "malformed base64": ({"json": {"image_base64": "this is *not* base64!"}}, (422,), "base64"),
        "base64 of text": ({"json": {"image_base64": base64.b64encode(b"hello").decode()}}, (415,), "text"),
        "missing json field": ({"json": {"beam": 1}}, (422,), "image_base64"),
        "missing form field": ({"files": {"picture": ("a.png", good_png, "image/png")}}, (422,), "file"),
        "invalid json": (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            (422,),
            "JSON",
        ),
        "bad beam": (
            {"files": {"file": ("a.png", good_png, "image/png")}, "data": {"beam": "wide"}},
            (422,),
            "beam",
        ),
    }


def assert_good(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["latex"], str)
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["ms"] >= 0
    assert isinstance(body["tokens"], list) and isinstance(body["alternatives"], list)
    return body


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_health_and_models(client: httpx.Client, model_dir: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert Path(health["model"]["model_dir"]) == model_dir
    models = client.get("/models").json()
    assert Path(models["loaded"]["model_dir"]) == model_dir
    assert isinstance(models["bundled"], list)


def test_docs_and_openapi(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch", "/health", "/models"):
        assert path in spec["paths"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def test_predict_multipart_and_json(client: httpx.Client, good_png: bytes) -> None:
    assert_good(client.post("/predict", files={"file": ("0.png", good_png, "image/png")}))
    assert_good(client.post("/predict", json={"image_base64": base64.b64encode(good_png).decode()}))
    data_url = "data:image/png;base64," + base64.b64encode(good_png).decode()
    body = assert_good(client.post("/predict", json={"image_base64": data_url, "beam": 3}))
    assert all(set(alt) == {"latex", "confidence"} for alt in body["alternatives"])


def test_batch(client: httpx.Client, shared_data: Path, good_png: bytes) -> None:
    images = val_images(shared_data, 3)
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    files.insert(1, ("files", ("notes.txt", b"not an image", "text/plain")))
    results = client.post("/predict/batch", files=files).json()["results"]
    assert len(results) == 4
    assert results[1]["status"] == 415 and "error" in results[1]
    for item in results[:1] + results[2:]:
        assert isinstance(item["latex"], str) and "error" not in item
    payload = [base64.b64encode(good_png).decode(), "%%%", base64.b64encode(_gray_png(1, 1)).decode()]
    response = client.post("/predict/batch", json=payload)
    assert response.status_code == 200
    results = response.json()["results"]
    assert "latex" in results[0] and [r.get("status") for r in results[1:]] == [422, 422]
    assert client.post("/predict/batch", json=[]).status_code == 422
    assert (
        client.post(
            "/predict/batch", json={"images_base64": [base64.b64encode(good_png).decode()]}
        ).status_code
        == 200
    )


@pytest.mark.parametrize("case", list(bad_inputs(b"\x89PNG....")))
def test_bad_input(client: httpx.Client, good_png: bytes, case: str) -> None:
    kwargs, statuses, word = bad_inputs(good_png)[case]
    response = client.post("/predict", **kwargs)
    assert response.status_code in statuses, f"{case}: {response.status_code} {response.text}"
    assert word.lower() in response.json()["detail"].lower(), response.text
    assert client.get("/health").json()["status"] == "ok"


def test_good_request_after_bad_inputs(client: httpx.Client, good_png: bytes) -> None:
    assert_good(client.post("/predict", files={"file": ("0.png", good_png, "image/png")}))


def _generated_bytes(total: int, chunk: int = 1 << 20):
    block = b"\x00" * chunk
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


def test_oversized_uploads_are_refused_without_being_held(
    server: ServerProcess, client: httpx.Client, good_png: bytes
) -> None:
    size = 50 * 1024 * 1024
    peak_before = server.peak_rss_kb()
    # Streamed without a length (chunked): the server counts while reading.
    head = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'

    def chunked():
        yield head
        yield from _generated_bytes(size)

    response = client.post(
        "/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xx"}
    )
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["detail"]
    # Declared by Content-Length: refused before reading; the connection stays usable.
    response = client.post(
        "/predict",
        content=_generated_bytes(size),
        headers={"content-type": "application/json", "content-length": str(size)},
    )
    assert response.status_code == 413, response.text
    grown_mb = (server.peak_rss_kb() - peak_before) / 1024
    assert grown_mb < 25, f"peak memory grew by {grown_mb:.0f} MB while refusing 50 MB uploads"
    assert_good(client.post("/predict", files={"file": ("0.png", good_png, "image/png")}))


def test_declared_length_is_refused_before_the_body_is_sent(server: ServerProcess) -> None:
    # A client that waits for the answer before sending its body gets 413 at once.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\nConnection: close\r\n\r\n"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_all_bad_inputs_at_once(client: httpx.Client, server: ServerProcess, good_png: bytes) -> None:
    cases = bad_inputs(good_png)
    jobs = [(name, kwargs, statuses) for name, (kwargs, statuses, _) in cases.items()] * 2
    jobs += [("good", {"files": {"file": ("0.png", good_png, "image/png")}}, (200,))] * 4

    def send(job):
        name, kwargs, statuses = job
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            return name, statuses, c.post("/predict", **kwargs).status_code

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(send, jobs))
    wrong = [(name, status) for name, statuses, status in outcomes if status not in statuses]
    assert not wrong, wrong
    assert_good(client.post("/predict", files={"file": ("0.png", good_png, "image/png")}))
    assert client.get("/health").json()["status"] == "ok"


def test_full_queue_answers_503_with_retry_after(model_dir: Path, good_png: bytes) -> None:
    # One slow image at a time (full-length outputs), and the burst decoded at once so it queues at once.
    env = {"TEXLENS_QUEUE_SIZE": "1", "TEXLENS_MAX_BATCH": "1", "TEXLENS_BATCH_WAIT_MS": "0"}
    env |= {"TEXLENS_MAX_TOKENS": "256", "TEXLENS_DECODE_THREADS": "24"}
    server = ServerProcess(model_dir, env=env)
    try:
        barrier = threading.Barrier(24)

        def send(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
                barrier.wait()
                return c.post(
                    "/predict", files={"file": ("0.png", good_png, "image/png")}, data={"beam": "2"}
                )

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(send, range(24)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses and 503 in statuses, statuses
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
        # Once the burst is over, the server answers normally again.
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            assert_good(c.post("/predict", files={"file": ("0.png", good_png, "image/png")}))
    finally:
        server.close()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from texlens.serve.api import ServeSettings

    monkeypatch.setenv("TEXLENS_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("TEXLENS_BATCH_WAIT_MS", "2.5")
    settings = ServeSettings.from_env(queue_size=3)
    assert (settings.max_body_bytes, settings.batch_wait_ms, settings.queue_size) == (1234, 2.5, 3)
    assert settings.second_read is True
    for raw, value in (("false", False), ("0", False), ("Off", False), ("yes", True), (" 1 ", True)):
        monkeypatch.setenv("TEXLENS_SECOND_READ", raw)
        assert ServeSettings.from_env().second_read is value, raw
    monkeypatch.setenv("TEXLENS_SECOND_READ", "maybe")
    with pytest.raises(ValueError, match="TEXLENS_SECOND_READ='maybe' is not a valid bool"):
        ServeSettings.from_env()
    monkeypatch.delenv("TEXLENS_SECOND_READ")
    monkeypatch.setenv("TEXLENS_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="TEXLENS_MAX_PIXELS"):
        ServeSettings.from_env()


@pytest.mark.parametrize("second_read", [True, False])
def test_the_server_reads_unsure_images_twice_unless_told_not_to(second_read: bool) -> None:
    from texlens.predictor import SECOND_READ_BELOW
    from texlens.serve.api import InferenceWorker, ServeSettings

    worker = InferenceWorker(ServeSettings(second_read=second_read))
    worker.start(timeout=120)
    try:
        assert worker.model_info["second_read_below"] == (SECOND_READ_BELOW if second_read else 0.0)
        assert worker.predictor.second_read_below == worker.model_info["second_read_below"]
    finally:
        worker.stop()
