"""The HTTP API: FastAPI over one background inference thread that batches requests arriving together.

One image through it: the request body is size-limited while it is read (``BodyLimitMiddleware``), decoded
and checked by ``texlens.image.load_image`` in a thread-pool thread (bad input -> a 4xx that says why),
queued for the single ``InferenceWorker`` thread that owns the ``Predictor`` (a full queue -> 503 with
``Retry-After``), predicted in a batch with its neighbours, and answered as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from texlens import DEFAULT_BEAM, __version__
from texlens.image import ImageError, load_image

log = logging.getLogger("texlens.serve")

IMAGE_TYPES = "PNG, JPEG, BMP, WebP, GIF or TIFF"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class ServeSettings:
    """Limits and batching of the API; every field can be set by the env var TEXLENS_<FIELD NAME IN CAPS>."""

    model: str | None = None  # model directory or bundled name; None = the bundled default
    max_body_bytes: int = 20_000_000  # a request body larger than this is refused with 413
    max_pixels: int = 40_000_000  # an image declaring more pixels is refused before it is decoded
    queue_size: int = 64  # requests waiting for the model; one more gets 503 + Retry-After
    batch_wait_ms: float = 5.0  # how long the worker waits for more requests to batch with the first
    max_batch: int = 16  # images predicted together at most
    max_batch_items: int = 64  # images in one /predict/batch request at most
    max_beam: int = 10  # the widest beam a client may ask for
    request_timeout_s: float = 120.0  # a request waiting longer for its prediction gets 504
    decode_threads: int = 4  # images decoded at once (each may take max_pixels bytes while decoding)
    backend: str = "torch"  # torch, onnx or onnx-int8
    max_tokens: int = 256  # longest LaTeX (in tokens) decoded; bounds the time one image can take
    threads: int = 0  # torch/onnxruntime threads for the model; 0 = their default
    # Read an image the model is unsure of again, at the other scale and zoomed (texlens.predictor.SECOND_READ_BELOW).
    second_read: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> ServeSettings:
        """Defaults, then TEXLENS_* environment variables, then the given keyword arguments (unless None)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"TEXLENS_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(f.default) if f.default is not None else str
            try:
                values[f.name] = _env_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ValueError(f"TEXLENS_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _env_bool(raw: str) -> bool:
    """An environment variable's yes/no: 1/0, true/false, yes/no, on/off (any case); ValueError otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


# --------------------------------------------------------------------------------------------------
# Errors that become HTTP responses
# --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as ``{"detail": message}`` with an HTTP status (and extra headers)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def image_error_status(error: ImageError) -> int:
    """HTTP status for an ImageError: 415 not an image / unsupported type, 413 too many pixels, else 422."""
    message = str(error)
    if "not an image" in message or "not supported" in message or "unsupported format" in message:
        return 415
    if "more than the limit" in message or "too large to decode" in message:
        return 413
    return 422  # empty, corrupt, truncated, too small, blank


def decode_image(data: bytes, max_pixels: int) -> Any:
    """Bytes -> grey PIL image, or ApiError with the status and message that say what is wrong."""
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ApiError(image_error_status(exc), str(exc).replace("image bytes: ", "", 1)) from None


def decode_base64(text: Any, what: str = "image_base64") -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URL) -> bytes, or ApiError 422."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(422, f"{what} must be a non-empty base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{what} is not valid base64") from None


# --------------------------------------------------------------------------------------------------
# The inference worker: one thread owns the Predictor and predicts queued images in batches
# --------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    images: list[Any]
    beam: int
    future: Future = field(default_factory=Future)


class InferenceWorker:
    """A single thread that loads the Predictor and predicts jobs from a bounded queue, batching neighbours."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, settings.queue_size))
        self.predictor: Any = None
        self.model_info: dict[str, Any] = {}
        self.load_error: BaseException | None = None
        self.batches = 0
        self.images = 0
        self.batch_seconds = 1.0  # running mean of one model call's time, for Retry-After
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="texlens-inference", daemon=True)

    def start(self, timeout: float | None = None) -> None:
        """Start the thread and wait until the model is loaded; re-raise a loading error."""
        self._thread.start()
        self._ready.wait(timeout)
        if self.load_error is not None:
            raise RuntimeError(
                f"could not load model {self.settings.model or 'default'}: {self.load_error}"
            ) from self.load_error

    def stop(self) -> None:
        """Ask the thread to finish its current batch and exit."""
        try:
            self.queue.put_nowait(None)
        except queue.Full:  # it drains the queue first; a daemon thread never blocks the exit
            pass

    def submit(self, images: list[Any], beam: int) -> Future:
        """Queue images for prediction; ApiError 503 when the queue is full."""
        job = _Job(images, beam)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            # The queue empties in about (queued jobs / batch size + 1) model calls.
            calls = self.queue.qsize() / max(1, self.settings.max_batch) + 1
            retry = max(1, math.ceil(calls * self.batch_seconds))
            raise ApiError(
                503, "the server is busy (request queue full); retry shortly", {"Retry-After": str(retry)}
            ) from None
        return job.future

    def _load(self) -> None:
        from texlens.predictor import Predictor

        started = time.perf_counter()
        cfg = self.settings
        threads = cfg.threads if cfg.threads > 0 else None
        self.predictor = Predictor(
            cfg.model,
            backend=cfg.backend,
            num_threads=threads,
            max_len=cfg.max_tokens,
            second_read=cfg.second_read,
        )
        self.model_info = describe_predictor(self.predictor, self.settings.model)
        self.model_info["load_s"] = round(time.perf_counter() - started, 3)
        log.info("model loaded: %s", self.model_info)

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported by start(); the thread has nothing else to do
            self.load_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs = [first]
            count = len(first.images)
            deadline = time.monotonic() + self.settings.batch_wait_ms / 1000.0
            stop = False
            while count < self.settings.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                count += len(job.images)
            self._predict(jobs)
            if stop:
                return

    def _predict(self, jobs: list[_Job]) -> None:
        """Predict the jobs, one model call per beam width, and resolve their futures."""
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        by_beam: dict[int, list[_Job]] = {}
        for job in live:
            by_beam.setdefault(job.beam, []).append(job)
        for beam, group in by_beam.items():
            images = [image for job in group for image in job.images]
            started = time.perf_counter()
            try:
                results = self.predictor.predict(images, beam=beam)
            except Exception as exc:  # one bad batch must not kill the worker
                log.exception("prediction failed")
                for job in group:
                    job.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(images)
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.perf_counter() - started)
            start = 0
            for job in group:
                job.future.set_result(results[start : start + len(job.images)])
                start += len(job.images)


def describe_predictor(predictor: Any, requested: str | None) -> dict[str, Any]:
    """What the loaded model is, for /health and /models."""
    info: dict[str, Any] = {"requested": requested or "default"}
    for attr in ("name", "model_name", "model_dir", "backend", "device", "second_read_below"):
        value = getattr(predictor, attr, None)
        if value is not None and not callable(value):
            info[attr] = str(value) if isinstance(value, Path) else value
    model = getattr(predictor, "model", None)
    config = getattr(model, "config", None)
    if model is not None:
        info.setdefault("architecture", getattr(model, "name", type(model).__name__))
        try:
            info["parameters"] = sum(p.numel() for p in model.parameters())
        except Exception:  # an ONNX session has no parameters()
            pass
    if config is not None and hasattr(config, "vocab_size"):
        info["vocab_size"] = config.vocab_size
    return info


def bundled_models() -> list[dict[str, str]]:
    """Model directories shipped inside the package (texlens/weights/<name>/config.json)."""
    root = Path(__file__).resolve().parents[1] / "weights"
    if not root.is_dir():
        return []
    return [{"name": d.name, "path": str(d)} for d in sorted(root.iterdir()) if (d / "config.json").is_file()]


def prediction_json(prediction: Any) -> dict[str, Any]:
    """A Prediction as the API's JSON: latex, confidence, ms, tokens, token_confidences, alternatives, and
    handwritten (whether the kept read was at the handwriting scale; null for a model without a router)."""
    if getattr(prediction, "error", None):
        return {"error": prediction.error, "status": 422}
    return {
        "latex": prediction.latex,
        "confidence": round(float(prediction.confidence), 6),
        "ms": round(float(prediction.ms), 3),
        "tokens": list(prediction.tokens),
        "token_confidences": [round(float(c), 6) for c in (prediction.token_confidences or [])],
        "alternatives": [
            {"latex": latex, "confidence": round(float(conf), 6)}
            for latex, conf in (prediction.alternatives or [])
        ],
        "handwritten": getattr(prediction, "handwritten", None),
        "glyph_height": getattr(prediction, "glyph_height", None),
    }


# --------------------------------------------------------------------------------------------------
# Body size limit, enforced while the body is read
# --------------------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413: by Content-Length before reading, else by counting."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            # Nothing is read: uvicorn discards the rest of the upload itself after our answer.
            await self._refuse(send, int(declared))
            return
        received = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(send, received)

    async def _refuse(self, send: Callable, size: int) -> None:
        detail = f"request body too large ({size:,}+ bytes); the limit is {self.limit:,} bytes"
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------
# Reading requests
# --------------------------------------------------------------------------------------------------


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _parse_beam(value: Any, settings: ServeSettings) -> int:
    """A beam width from a query/form/JSON value, or ApiError 422."""
    if value is None or value == "":
        return DEFAULT_BEAM
    try:
        beam = int(value)
        if isinstance(value, float) and value != beam:
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(422, f"beam must be an integer, got {value!r}") from None
    if not 1 <= beam <= settings.max_beam:
        raise ApiError(422, f"beam must be between 1 and {settings.max_beam}, got {beam}")
    return beam


async def _read_json(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise ApiError(422, 'empty request body; send a multipart `file` or JSON {"image_base64": ...}')
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, f"request body is not valid JSON ({exc})") from None


async def _read_form(request: Request, settings: ServeSettings) -> Any:
    try:
        return await request.form(max_files=settings.max_batch_items + 1, max_fields=16)
    except (MultiPartException, HTTPException) as exc:  # Starlette turns parse errors into 400s
        raise ApiError(422, f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None


async def _upload_bytes(upload: Any, name: str) -> bytes:
    if not isinstance(upload, UploadFile):
        raise ApiError(422, f"form field `{name}` must be a file upload")
    return await upload.read()


def _unsupported_media(content_type: str) -> ApiError:
    return ApiError(
        415,
        f"unsupported Content-Type {content_type or '(none)'!r}; send multipart/form-data with a `file` "
        f"field or application/json with `image_base64`",
    )


async def read_single(request: Request, settings: ServeSettings) -> tuple[bytes, int]:
    """The image bytes and beam of a /predict request (multipart `file` or JSON `image_base64`)."""
    ctype = _content_type(request)
    query_beam = request.query_params.get("beam")
    if ctype == "multipart/form-data":
        form = await _read_form(request, settings)
        try:
            if "file" not in form:
                raise ApiError(422, "missing multipart field `file` (the image to read)")
            data = await _upload_bytes(form["file"], "file")
            return data, _parse_beam(form.get("beam", query_beam), settings)
        finally:
            await form.close()
    if ctype == "application/json":
        payload = await _read_json(request)
        if not isinstance(payload, dict) or "image_base64" not in payload:
            raise ApiError(422, "missing field `image_base64` in the JSON body")
        return decode_base64(payload["image_base64"]), _parse_beam(payload.get("beam", query_beam), settings)
    if not ctype and not await request.body():
        raise ApiError(422, 'empty request body; send a multipart `file` or JSON {"image_base64": ...}')
    raise _unsupported_media(ctype)


async def read_batch(
    request: Request, settings: ServeSettings
) -> tuple[list[tuple[str, bytes | ApiError]], int]:
    """The (name, bytes or error) items and beam of a /predict/batch request."""
    ctype = _content_type(request)
    query_beam = request.query_params.get("beam")
    items: list[tuple[str, bytes | ApiError]] = []
    if ctype == "multipart/form-data":
        form = await _read_form(request, settings)
        try:
            uploads = form.getlist("files") or form.getlist("file")
            if not uploads:
                raise ApiError(422, "missing multipart field `files` (one or more images)")
            for i, upload in enumerate(uploads):
                name = getattr(upload, "filename", None) or f"#{i}"
                try:
                    items.append((name, await _upload_bytes(upload, "files")))
                except ApiError as exc:
                    items.append((name, exc))
            beam = _parse_beam(form.get("beam", query_beam), settings)
        finally:
            await form.close()
    elif ctype == "application/json":
        payload = await _read_json(request)
        beam_value = query_beam
        if isinstance(payload, dict):
            if "images_base64" not in payload:
                raise ApiError(
                    422, "missing field `images_base64` (a list of base64 images) in the JSON body"
                )
            beam_value, payload = payload.get("beam", query_beam), payload["images_base64"]
        if not isinstance(payload, list) or not payload:
            raise ApiError(422, "the JSON body must be a non-empty list of base64 images")
        for i, text in enumerate(payload):
            try:
                items.append((f"#{i}", decode_base64(text, f"item {i}")))
            except ApiError as exc:
                items.append((f"#{i}", exc))
        beam = _parse_beam(beam_value, settings)
    else:
        raise _unsupported_media(ctype)
    if len(items) > settings.max_batch_items:
        raise ApiError(413, f"{len(items)} images in one request; the limit is {settings.max_batch_items}")
    return items, beam


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------

_BEAM = {"type": "integer", "default": DEFAULT_BEAM, "minimum": 1, "description": "beam width; 1 = greedy"}


def _request_body(multipart: dict[str, Any], json_body: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of an endpoint that reads its own multipart or JSON body."""
    content = {"multipart/form-data": {"schema": multipart}, "application/json": {"schema": json_body}}
    return {"requestBody": {"required": True, "content": content}}


def _object(required: str, **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [required], "properties": {**properties, "beam": _BEAM}}


_IMAGE_FILE = {"type": "string", "format": "binary", "description": f"{IMAGE_TYPES} image"}
_BASE64 = {"type": "string", "description": "base64 image or data: URL"}
_PREDICT_BODY = _request_body(
    _object("file", file=_IMAGE_FILE), _object("image_base64", image_base64=_BASE64)
)
_BATCH_BODY = _request_body(
    _object("files", files={"type": "array", "items": _IMAGE_FILE}),
    {
        "oneOf": [
            {"type": "array", "items": _BASE64},
            _object("images_base64", images_base64={"type": "array", "items": _BASE64}),
        ]
    },
)

_ERRORS = {
    413: {"description": "body or image too large"},
    415: {"description": "not an image, or an unsupported file or content type"},
    422: {"description": "corrupt, blank or tiny image; malformed base64; missing field"},
    503: {"description": "queue full; retry after the Retry-After header's seconds"},
}


def create_app(
    model: str | Path | None = None,
    *,
    max_body_bytes: int | None = None,
    max_pixels: int | None = None,
    queue_size: int | None = None,
    batch_wait_ms: float | None = None,
    max_batch: int | None = None,
    **settings: Any,
) -> FastAPI:
    """The FastAPI app; unset settings come from TEXLENS_* env vars, then the defaults of ServeSettings."""
    cfg = ServeSettings.from_env(
        model=str(model) if model is not None else None,
        max_body_bytes=max_body_bytes,
        max_pixels=max_pixels,
        queue_size=queue_size,
        batch_wait_ms=batch_wait_ms,
        max_batch=max_batch,
        **settings,
    )
    worker = InferenceWorker(cfg)
    decode_slots = asyncio.Semaphore(max(1, cfg.decode_threads))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        await asyncio.to_thread(worker.start)
        yield
        worker.stop()

    app = FastAPI(
        title="texlens",
        version=__version__,
        description="Read a picture of a math formula (printed or handwritten) and get its LaTeX.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.worker = cfg, worker
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    async def predict_images(images: list[Any], beam: int) -> list[Any]:
        future = worker.submit(images, beam)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(
                504, f"no prediction within {cfg.request_timeout_s:g} s; the server is overloaded"
            ) from None

    @app.post("/predict", openapi_extra=_PREDICT_BODY, responses=_ERRORS)
    async def predict(request: Request) -> dict[str, Any]:
        """Read one image: multipart field `file`, or JSON `{"image_base64": ..., "beam": N}` (beam optional)."""
        data, beam = await read_single(request, cfg)
        async with decode_slots:
            image = await run_in_threadpool(decode_image, data, cfg.max_pixels)
        (prediction,) = await predict_images([image], beam)
        result = prediction_json(prediction)
        if "error" in result:
            raise ApiError(422, result["error"])
        return result

    @app.post("/predict/batch", openapi_extra=_BATCH_BODY, responses=_ERRORS)
    async def predict_batch(request: Request) -> dict[str, Any]:
        """Read several images (multipart `files`, or a JSON list of base64); errors are reported per item."""
        items, beam = await read_batch(request, cfg)

        def decode_all() -> list[Any]:
            out: list[Any] = []
            for _, data in items:
                try:
                    out.append(data if isinstance(data, ApiError) else decode_image(data, cfg.max_pixels))
                except ApiError as exc:
                    out.append(exc)
            return out

        async with decode_slots:
            decoded = await run_in_threadpool(decode_all)
        good = [d for d in decoded if not isinstance(d, ApiError)]
        predictions = iter(await predict_images(good, beam) if good else [])
        results = []
        for (name, _), item in zip(items, decoded, strict=True):
            if isinstance(item, ApiError):
                results.append({"name": name, "error": item.detail, "status": item.status})
            else:
                results.append({"name": name, **prediction_json(next(predictions))})
        return {"results": results}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and the loaded model."""
        return {
            "status": "ok",
            "model": worker.model_info,
            "queue": worker.queue.qsize(),
            "batches": worker.batches,
            "images": worker.images,
        }

    @app.get("/models")
    async def models() -> dict[str, Any]:
        """The loaded model and the models bundled with the package."""
        return {"loaded": worker.model_info, "bundled": bundled_models()}

    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` and multi-worker serving: everything from TEXLENS_* env vars."""
    return create_app()


def run_server(host: str = "127.0.0.1", port: int = 8000, model: str | None = None, workers: int = 1) -> None:
    """Serve the API with uvicorn (``workers`` processes, each with its own model and inference thread)."""
    import uvicorn

    if model is not None:
        os.environ["TEXLENS_MODEL"] = str(model)  # the worker processes build their app from the env
    uvicorn.run(
        "texlens.serve.api:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )
