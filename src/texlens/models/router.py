"""A small CNN that tells handwritten formulas from printed ones, so each can be read at its own scale.

The Predictor preprocesses every image at the printed scale (glyphs 9.4 px high), asks the router, and reads an
image it calls handwritten again at the model's ``handwriting_glyph_height`` (``texlens.image.PreprocessConfig``):
handwriting shrunk to the printed scale loses the details (4-5 px subscripts) that tell ``8`` from ``5``.

The router knows nothing of training (``texlens.router`` trains it). It pools its features over each image's
own cells, so the padding of a batch does not change an image's answer.
A model directory may hold ``router.safetensors`` and ``router.json`` beside the model's own files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

ROUTER_WEIGHTS, ROUTER_CONFIG = "router.safetensors", "router.json"

__all__ = [
    "ROUTER_CONFIG",
    "ROUTER_WEIGHTS",
    "HandwritingRouter",
    "RouterConfig",
    "load_router",
    "save_router",
    "window",
]


@dataclass
class RouterConfig:
    widths: tuple[int, ...] = (16, 32, 64, 96)  # channels of each stage (stride 2, then stride 1)
    # The router reads a window of the preprocessed image this big (rows, columns): the middle of it in use, a
    # random one in training. Strokes look the same everywhere in a formula, and a fixed size keeps it cheap.
    window: tuple[int, int] = (64, 256)
    # Preprocessing of the router's input (texlens.image.PreprocessConfig fields); empty = the defaults.
    preprocess: dict[str, Any] = field(default_factory=dict)
    # "batch" (batch norm) or "group" (group norm: no running statistics, so the call on an image does not depend
    # on the batches the router last trained on).
    norm: str = "batch"

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"router widths must be positive channel counts, not {self.widths}")
        self.window = (int(self.window[0]), int(self.window[1]))
        if min(self.window) < 8:
            raise ValueError(f"router window must be at least 8 x 8 pixels, not {self.window}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"router norm must be 'batch' or 'group', not {self.norm!r}")

    @property
    def full_window(self) -> bool:
        """Whether the router reads every image on a whole window (a smaller one zero-padded): a group-norm one
        does, because its statistics take in padding, which must then be the same in training batches and in use."""
        return self.norm == "group"

    def cut(self, pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """What this router reads of a preprocessed (H, W) image, in training (``rng``) and in use alike."""
        return window(pixels, self.window, rng, pad=self.full_window)


class HandwritingRouter(nn.Module):
    """Preprocessed images (B, 1, H, W), ink = 1 on 0 -> logits (B,) of "handwritten".

    Stages of two 3x3 convolutions (the first with stride 2) with batch norm, then the mean and the maximum of
    the features over each image's own cells (``sizes``: the (h, w) of each image in a padded batch), so the
    padding of a batch does not change an image's answer.
    """

    def __init__(self, config: RouterConfig | None = None):
        super().__init__()
        self.config = config or RouterConfig()
        layers: list[nn.Module] = []
        channels = 1
        for width in self.config.widths:
            for stride in (2, 1):
                layers += [
                    nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(width)
                    if self.config.norm == "batch"
                    else nn.GroupNorm(min(8, width), width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.stride = 2 ** len(self.config.widths)
        self.head = nn.Linear(2 * channels, 1)

    def forward(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        features = self.features(images)
        if sizes is None:
            pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        else:
            rows = []
            for k, (h, w) in enumerate(sizes):
                cells = features[k, :, : -(-h // self.stride), : -(-w // self.stride)]
                rows.append(torch.cat([cells.mean(dim=(1, 2)), cells.amax(dim=(1, 2))]))
            pooled = torch.stack(rows)
        return self.head(pooled).squeeze(1)

    @torch.inference_mode()
    def is_handwritten(self, pixels: np.ndarray) -> bool:
        """The router's call on one preprocessed (H, W) image (ink = 1), read through the middle window."""
        view = torch.from_numpy(self.config.cut(np.asarray(pixels, dtype=np.float32)))
        return bool(self(view[None, None])[0] > 0)


def window(
    pixels: np.ndarray, size: tuple[int, int], rng: np.random.Generator | None = None, pad: bool = False
) -> np.ndarray:
    """The part of a preprocessed (H, W) image the router reads: at most ``size``, the middle one without ``rng``,
    else a random one; with ``pad``, exactly ``size``, the image's part at the top left on blank (0) padding."""
    out = pixels
    for axis, limit in enumerate(size):
        extent = out.shape[axis]
        if extent > limit:
            start = (extent - limit) // 2 if rng is None else int(rng.integers(0, extent - limit + 1))
            out = out[start : start + limit] if axis == 0 else out[:, start : start + limit]
    if pad and out.shape != tuple(size):
        canvas = np.zeros(size, dtype=out.dtype)
        canvas[: out.shape[0], : out.shape[1]] = out
        return canvas
    return np.ascontiguousarray(out)


def save_router(router: HandwritingRouter, directory: str | Path) -> Path:
    """Write ``router.safetensors`` and ``router.json`` into ``directory`` (e.g. a model directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in router.state_dict().items()}
    safetensors.torch.save_file(state, str(directory / ROUTER_WEIGHTS))
    config = asdict(router.config)
    config["widths"], config["window"] = list(config["widths"]), list(config["window"])
    (directory / ROUTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def load_router(directory: str | Path) -> HandwritingRouter | None:
    """The router of a model directory in eval mode, or None if it has none."""
    directory = Path(directory)
    weights, config_file = directory / ROUTER_WEIGHTS, directory / ROUTER_CONFIG
    if not weights.is_file() and not config_file.is_file():
        return None
    if not (weights.is_file() and config_file.is_file()):
        missing = ROUTER_CONFIG if weights.is_file() else ROUTER_WEIGHTS
        raise FileNotFoundError(f"{directory} has half a router: {missing} is missing")
    try:
        config = RouterConfig(**json.loads(config_file.read_text(encoding="utf-8")))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_file}: not a router config ({exc})") from exc
    router = HandwritingRouter(config)
    router.load_state_dict(safetensors.torch.load_file(str(weights)))
    return router.eval()
