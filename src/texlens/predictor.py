"""Predictor: the one entry point that turns images into LaTeX.

It hides the stages of docs/DESIGN.md behind one call: load the model directory (safetensors + JSON, never
pickle), ``texlens.image`` preprocessing with the model's own ``PreprocessConfig``, batching of images of
similar width, ``texlens.decoding`` (greedy with the KV cache, or beam search) and ``to_latex``. The same
decoding code runs the PyTorch model or, with ``backend="onnx"``, the ONNX graphs of ``texlens.export``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from texlens import DEFAULT_BEAM
from texlens.decoding import Hypothesis, ViewEnsemble, beam_search, confidence, greedy_decode
from texlens.image import (
    ImageError,
    ImageSource,
    InkCrop,
    PreprocessConfig,
    batch_images,
    load_image,
)
from texlens.latex import SPECIAL_TOKENS, Vocab, to_latex
from texlens.models.router import load_router

__all__ = ["BACKENDS", "Prediction", "Predictor", "resolve_model_dir"]

BACKENDS = ("torch", "onnx", "onnx-int8")
DEFAULT_MODEL = "default"
# Images read ahead of decoding: enough to sort into batches of similar width, few enough to stream.
WINDOW_BATCHES = 4


class View(NamedTuple):
    """One view of an image the model may read: the preprocessed pixels (ink = 1), whether they are at the
    handwriting scale (None: the model has no router), and the glyph height they were scaled to."""

    pixels: np.ndarray
    handwritten: bool | None
    glyph_height: float


Read = tuple[View, ...]  # one read of an image: its views decoded together (usually one)


@dataclass
class Prediction:
    """The LaTeX read from one image, with how sure the model is; ``error`` is set when the image was unusable."""

    image: str | None
    latex: str = ""
    confidence: float = 0.0  # geometric mean of the token probabilities (texlens.decoding.confidence)
    tokens: list[str] = field(default_factory=list)
    token_confidences: list[float] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # other beam hypotheses, best first
    ms: float = 0.0  # preprocessing + this image's share of its batch's decoding time
    error: str | None = None
    attention: np.ndarray | None = None  # (T, h, w): where each output token looked in the feature map
    image_size: tuple[int, int] | None = None  # (H, W) of the preprocessed image
    handwritten: bool | None = None  # read at the handwriting scale? (None: the model has no router)
    glyph_height: float | None = None  # the glyph height (pixels) the kept read was made at
    pixels: np.ndarray | None = None  # the preprocessed image (ink = 1), kept when attention is asked for

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``texlens predict --json``."""
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {
            "image": self.image,
            "latex": self.latex,
            "confidence": round(self.confidence, 6),
            "tokens": self.tokens,
            "token_confidences": [round(c, 6) for c in self.token_confidences],
            "alternatives": [[latex, round(conf, 6)] for latex, conf in self.alternatives],
            "ms": round(self.ms, 3),
            "handwritten": self.handwritten,
            "glyph_height": self.glyph_height,
        }


def resolve_model_dir(model: str | Path | None) -> Path:
    """The directory of a model given as a path, a bundled model name, or ``None`` (the bundled default)."""
    if model is not None and Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    name = DEFAULT_MODEL if model is None else str(model)
    if model is not None and ("/" in name or "\\" in name or name.startswith(".")):
        raise FileNotFoundError(f"model directory {name} does not exist")
    bundled = Path(str(resources.files("texlens") / "weights" / name))
    if bundled.is_dir():
        return bundled
    available = _bundled_models()
    hint = f"bundled models: {', '.join(available)}" if available else "no bundled model is installed"
    raise FileNotFoundError(
        f"model {name!r} not found: it is neither a directory nor a bundled model ({hint}). "
        "Train one with `texlens train --config configs/...` and pass its output folder with --model DIR "
        "(a folder holding model.safetensors, config.json and vocab.json)."
    )


def _bundled_models() -> list[str]:
    root = Path(str(resources.files("texlens") / "weights"))
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def read_preprocess_config(model_dir: Path) -> PreprocessConfig:
    """The model's ``PreprocessConfig`` from ``config.json`` ("preprocess"), else the defaults."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return PreprocessConfig()
    values = json.loads(config_file.read_text(encoding="utf-8")).get("preprocess") or {}
    known = {f.name for f in fields(PreprocessConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_file}: unknown preprocess settings {unknown}; known: {sorted(known)}")
    return PreprocessConfig(**values)


LENGTH_PENALTY = 0.5  # beam search's length normalisation (GNMT alpha), chosen by benchmarks/beam_alpha.py
# A read at the router's scale less sure than this is read again, at the other scale (a model with a router and a
# handwriting glyph height) and, if still unsure, at the router's scale zoomed by SECOND_READ_ZOOM; the surest read
# is kept. Print (the router's call) is read first at its scale and zoomed together, an ensemble whose
# log-probabilities are averaged at every step, then at the other scale if unsure. The zoom and the ensemble were
# found by benchmarks/scale_views.py, the threshold chosen by benchmarks/second_read.py.
SECOND_READ_BELOW = 0.88
SECOND_READ_ZOOM = 1.12


class Predictor:
    """Load a model once, then read formulas from images: ``Predictor().predict("formula.png").latex``.

    ``backend``: "torch", "onnx" or "onnx-int8" (a model directory is exported to ONNX on first use and cached);
    ``num_threads`` sets torch's (process-wide) and onnxruntime's thread count; ``length_penalty`` is beam
    search's GNMT alpha (``texlens.decoding.beam_search``; see benchmarks/beam_alpha.py for how it was chosen).
    A model with a router reads each image at the scale the router picks (printed or handwriting glyph height);
    a read whose confidence is below ``second_read_below`` is repeated at the other scale and at the router's
    scale zoomed by ``second_read_zoom`` (a model without a router: the zoomed scale only), and the surest read
    is kept; print is read first at its scale and zoomed together (one ensemble read, ``reads()``), then at the
    other scale if unsure. ``second_read=False`` (or a threshold of ``None`` or 0) reads once, at the router's
    scale.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        backend: str = "torch",
        num_threads: int | None = None,
        max_len: int = 256,
        length_penalty: float | str = LENGTH_PENALTY,
        second_read_below: float | None = SECOND_READ_BELOW,
        second_read: bool = True,
        second_read_zoom: float = SECOND_READ_ZOOM,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.backend = backend
        self.max_len = max_len
        self.length_penalty = length_penalty
        self.second_read_below = (second_read_below or 0.0) if second_read else 0.0
        if second_read_zoom <= 0:
            raise ValueError(f"second_read_zoom must be positive, not {second_read_zoom}")
        self.second_read_zoom = second_read_zoom
        self.model_dir = resolve_model_dir(model)
        if backend == "torch":
            from texlens.models import load_model

            self.model, self.vocab = load_model(self.model_dir)
        else:
            from texlens.export import OnnxModel, ensure_onnx

            onnx_dir = ensure_onnx(self.model_dir, int8=backend == "onnx-int8")
            self.model = OnnxModel(onnx_dir, int8=backend == "onnx-int8", num_threads=num_threads)
            self.vocab = Vocab.load(onnx_dir / "vocab.json")
        self.preprocess_config = read_preprocess_config(self.model_dir)
        self.router = load_router(self.model_dir)
        # The router's input: None when it is the model's printed-scale view, which is then preprocessed once.
        self.router_preprocess: PreprocessConfig | None = None
        if self.router is not None:
            own = PreprocessConfig(**self.router.config.preprocess)
            if replace(own, handwriting_glyph_height=None) != replace(
                self.preprocess_config, handwriting_glyph_height=None
            ):
                self.router_preprocess = own
        elif self.preprocess_config.handwriting_glyph_height is not None:
            warnings.warn(
                f"{self.model_dir}/config.json sets handwriting_glyph_height but the directory has no router "
                "(router.safetensors, router.json): every image is read at the printed scale",
                stacklevel=2,
            )
        # The decoder's position table bounds the output: never ask for more tokens than it has positions.
        model_limit = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8")).get("max_len")
        if model_limit:
            self.max_len = min(self.max_len, int(model_limit) - 1)

    def __repr__(self) -> str:
        return f"Predictor({str(self.model_dir)!r}, backend={self.backend!r})"

    # --- public API -------------------------------------------------------------------------------------------
    def predict(
        self, images: ImageSource | Sequence[ImageSource], beam: int = DEFAULT_BEAM, attention: bool = False
    ) -> Prediction | list[Prediction]:
        """Read one image (path, bytes, PIL image, array) or a list of them; a single unusable image raises ImageError."""
        if isinstance(images, (list, tuple)):
            return list(self.predict_paths(images, beam=beam, attention=attention))
        result = next(self.predict_paths([images], beam=beam, attention=attention))
        if result.error is not None:
            raise ImageError(f"{result.image}: {result.error}" if result.image else result.error)
        return result

    def predict_paths(
        self,
        paths: Iterable[ImageSource],
        beam: int = DEFAULT_BEAM,
        attention: bool = False,
        batch_size: int = 16,
    ) -> Iterator[Prediction]:
        """Predictions in input order; an unusable image gives a Prediction with ``error`` and the rest go on."""
        if beam < 1:
            raise ValueError(f"beam must be at least 1, not {beam}")
        batch_size = max(1, batch_size)
        window: list[ImageSource] = []
        for source in paths:
            window.append(source)
            if len(window) == batch_size * WINDOW_BATCHES:
                yield from self._predict_window(window, beam, attention, batch_size)
                window = []
        if window:
            yield from self._predict_window(window, beam, attention, batch_size)

    def preprocess(self, source: ImageSource) -> np.ndarray:
        """The model's view of an image at the router's scale: float32 (H, W), ink = 1 (raises ImageError)."""
        return self.views(source)[0][0]

    def views(self, source: ImageSource) -> list[View]:
        """Every view the model may read of an image, the router's scale first, then (with second reads on) the
        other scale and the zoomed one; raises ImageError."""
        return self._look(load_image(source))[0]

    def reads(self, source: ImageSource) -> list[Read]:
        """What ``predict`` reads an image at, in order (each read one view, or views decoded together);
        raises ImageError."""
        return self._look(load_image(source))[1]

    def decode(
        self,
        arrays: Sequence[np.ndarray | Sequence[np.ndarray]],
        beam: int = DEFAULT_BEAM,
        batch_size: int = 16,
    ) -> list[Prediction]:
        """Read preprocessed (H, W) arrays (ink = 1) as they are: no routing, no second read. An item that is a
        list of arrays (views of one image) is decoded as one ensemble."""
        groups = [[a] if isinstance(a, np.ndarray) else list(a) for a in arrays]
        results = [Prediction(image=None, image_size=(g[0].shape[0], g[0].shape[1])) for g in groups]
        reads = [tuple(View(a, None, math.nan) for a in g) for g in groups]  # decoding needs the pixels only
        self._decode_sorted(results, reads, beam, False, max(1, batch_size))
        return results

    def _look(self, image: Any) -> tuple[list[View], list[Read]]:
        """The model's views of a loaded image, the router's scale first, and the reads made of them in order.

        With second reads on, the later views are what an unsure first read is read again at: the other scale
        (printed or handwriting glyph height, with a router and a handwriting height), then the router's scale
        zoomed by ``second_read_zoom``. Each view is read alone, in that order, except print (the router's call,
        with both scales to choose from): its printed view and the zoomed one are decoded together (an
        ensemble), then the other scale (benchmarks/scale_views.py measured this). The router reads the printed
        view (or its own preprocessing, if it differs); the ink is found once.
        """
        cfg = self.preprocess_config
        ink = InkCrop.of(image)
        printed = ink.scaled(cfg)
        if self.router is None:
            scales: list[tuple[PreprocessConfig, bool | None]] = [(cfg, None)]
        else:
            view = printed if self.router_preprocess is None else ink.scaled(self.router_preprocess)
            handwritten = self.router.is_handwritten(view)
            if cfg.handwriting_glyph_height is None:
                scales = [(cfg, handwritten)]
            else:
                scales = [(cfg.for_handwriting(), True), (cfg, False)][:: 1 if handwritten else -1]
        ensemble = False  # print, with both scales to choose from: its view and the zoomed one read together
        if self.second_read_below <= 0:
            scales = scales[:1]
        else:
            ensemble = len(scales) == 2 and scales[0][1] is False
            scales.append((scales[0][0].zoomed(self.second_read_zoom), scales[0][1]))
        views = [
            View(printed if scale is cfg else ink.scaled(scale), hw, scale.target_glyph_height)
            for scale, hw in scales
        ]
        if ensemble:
            return views, [(views[0], views[2]), (views[1],)]
        return views, [(view,) for view in views]

    # --- internals --------------------------------------------------------------------------------------------
    def _predict_window(
        self, sources: list[ImageSource], beam: int, attention: bool, batch_size: int
    ) -> list[Prediction]:
        """Preprocess every image once, decode them in batches of similar width, read the unsure ones again in
        their further views, return them in input order."""
        results: list[Prediction] = []
        ready: list[tuple[int, Read]] = []
        others: dict[int, list[Read]] = {}  # what an unsure image is read again at
        for i, source in enumerate(sources):
            name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", None)
            start = time.perf_counter()
            try:
                first, *more = self._look(load_image(source))[1]
            except ImageError as exc:
                message = str(exc)
                if name and message.startswith(f"{name}: "):  # the path is in the "image" field already
                    message = message[len(name) + 2 :]
                results.append(Prediction(image=name, error=message))
                continue
            ms = (time.perf_counter() - start) * 1000
            if more:
                others[len(results)] = more
            results.append(self._prediction_for(name, ms, first))
            ready.append((i, first))
        self._decode_sorted(
            [results[i] for i, _ in ready], [p for _, p in ready], beam, attention, batch_size
        )
        # Unsure reads are read again, one further view at a time, and the surest read is kept.
        for k in range(max((len(v) for v in others.values()), default=0)):
            unsure = [
                i for i, v in others.items() if len(v) > k and results[i].confidence < self.second_read_below
            ]
            if not unsure:
                break
            again = [self._prediction_for(results[i].image, results[i].ms, others[i][k]) for i in unsure]
            self._decode_sorted(again, [others[i][k] for i in unsure], beam, attention, batch_size)
            for i, read in zip(unsure, again, strict=True):
                if read.confidence > results[i].confidence:
                    results[i] = read
                else:
                    results[i].ms = read.ms
        return results

    @staticmethod
    def _prediction_for(name: str | None, ms: float, read: Read) -> Prediction:
        """The Prediction a read will fill in (a read of several views says its first view's size and scale)."""
        view = read[0]
        size = (view.pixels.shape[0], view.pixels.shape[1])
        return Prediction(
            image=name, ms=ms, image_size=size, handwritten=view.handwritten, glyph_height=view.glyph_height
        )

    def _decode_sorted(
        self, results: list[Prediction], reads: list[Read], beam: int, attention: bool, batch_size: int
    ) -> None:
        """Decode reads in batches of similar width (and as many views) and fill in their Predictions."""
        # Similar widths together: less padding, so less encoder work and cleaner attention.
        order = sorted(
            range(len(reads)),
            key=lambda k: (len(reads[k]), reads[k][0].pixels.shape[1], reads[k][0].pixels.shape[0]),
        )
        chunk: list[int] = []
        for k in order:
            if chunk and (len(chunk) == batch_size or len(reads[k]) != len(reads[chunk[0]])):
                self._decode_batch([results[j] for j in chunk], [reads[j] for j in chunk], beam, attention)
                chunk = []
            chunk.append(k)
        if chunk:
            self._decode_batch([results[j] for j in chunk], [reads[j] for j in chunk], beam, attention)

    def _decode_batch(self, results: list[Prediction], reads: list[Read], beam: int, attention: bool) -> None:
        """Decode one batch of reads (each of as many views) and fill in their Predictions."""
        start = time.perf_counter()
        arrays = [read[0].pixels for read in reads]
        images, sizes = batch_images(arrays)
        others = [batch_images([read[j].pixels for read in reads])[0] for j in range(1, len(reads[0]))]
        model = ViewEnsemble(self.model, others) if others else self.model
        options = {"max_len": self.max_len, "vocab": self.vocab, "return_attention": attention}
        with torch.inference_mode():
            if beam == 1:
                nbest = [[h] for h in greedy_decode(model, images, **options)]
            else:
                nbest = beam_search(model, images, beam, length_penalty=self.length_penalty, **options)
        share = (time.perf_counter() - start) * 1000 / len(arrays)
        for result, pixels, size, hyps in zip(results, arrays, sizes, nbest, strict=True):
            result.tokens, result.token_confidences, result.attention = self._describe(
                hyps[0], size, attention
            )
            result.confidence = confidence(hyps[0])
            result.latex = to_latex(result.tokens)
            seen = {result.latex}
            for hyp in hyps[1:]:
                latex = to_latex(self._describe(hyp, size, False)[0])
                if latex not in seen:
                    seen.add(latex)
                    result.alternatives.append((latex, confidence(hyp)))
            result.ms += share
            if attention:
                result.pixels = pixels

    def _describe(
        self, hyp: Hypothesis, size: tuple[int, int], attention: bool
    ) -> tuple[list[str], list[float], np.ndarray | None]:
        """Tokens of a hypothesis, their probabilities and their (T, h, w) attention cropped to the image."""
        tokens: list[str] = []
        confidences: list[float] = []
        rows: list[int] = []
        for k, (token_id, logprob) in enumerate(zip(hyp.ids, hyp.token_logprobs, strict=True)):
            if token_id == self.vocab.end_id:
                break
            if token_id < len(SPECIAL_TOKENS):
                continue
            tokens.append(self.vocab.itos[token_id])
            confidences.append(math.exp(logprob))
            rows.append(k)
        maps = None
        if attention and hyp.attention is not None and rows:
            # The batch was padded to its largest image: keep the feature cells that cover this image.
            h, w = self.model.feature_shape(*size)
            maps = np.asarray(hyp.attention, dtype=np.float32)[rows, :h, :w]
        return tokens, confidences, maps
