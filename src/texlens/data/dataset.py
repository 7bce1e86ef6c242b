"""Turn samples into training batches: a Dataset, size bucketing, weighted mixing of datasets, padding.

One sample goes ``Sample(image path, canonical LaTeX)`` -> ``load_image`` -> (augmentation, on the uint8
image as loaded) -> ``preprocess`` -> ``(float32 HxW image, ink = 1; token ids <start> ... <end>)``.
The batch sampler puts images of similar size together so little of a batch is padding, and ``collate``
pads images to the batch's largest (rounded up to a multiple of 16) and labels to the batch's longest
label, as the seed report's collate_fn did.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from texlens.latex import Vocab

__all__ = [
    "Batch",
    "BucketBatchSampler",
    "FormulaDataset",
    "collate",
    "image_size",
    "mix_indices",
    "pad_labels",
]

log = logging.getLogger(__name__)

# The encoder downsamples by up to 16: padded sizes divisible by it keep feature maps aligned.
PAD_MULTIPLE = 16


class Batch(NamedTuple):
    """A padded batch: images (B,1,H,W) with ink = 1, decoder input ``<start> + tokens`` and target ``tokens + <end>``."""

    images: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor


@cache
def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header only (PNG read directly, other formats via Pillow)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width)
    from PIL import Image

    with Image.open(path) as im:  # Pillow reads the header lazily; no pixel decoding
        return im.height, im.width


@dataclass
class _Prepared:
    """What the dataset keeps per sample: path, encoded label."""

    image: Path
    ids: np.ndarray
    latex: str


class FormulaDataset(Dataset):
    """Samples -> ``(image float32 HxW with ink = 1, token ids int64 with <start>/<end>)``.

    ``augment`` (e.g. ``texlens.data.augment.build_augment(0.5)``) maps the uint8 grey image as loaded to a
    perturbed one, before ``preprocess`` crops, scales and fixes the polarity.

    Labels longer than ``max_tokens`` are dropped (counted in ``dropped``): they are rare, slow every batch
    they land in and usually come from broken sources.
    """

    def __init__(
        self,
        samples: Sequence[Any],
        vocab: Vocab,
        preprocess_cfg: Any = None,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        max_tokens: int = 256,
    ):
        self.vocab = vocab
        self.preprocess_cfg = preprocess_cfg
        self.augment = augment
        self.items: list[_Prepared] = []
        for s in samples:
            tokens = s.latex.split()
            if not tokens or len(tokens) > max_tokens:
                continue
            self.items.append(
                _Prepared(Path(s.image), np.asarray(vocab.encode(tokens), dtype=np.int64), s.latex)
            )
        self.dropped = len(samples) - len(self.items)
        self.bad_images: set[Path] = set()
        if self.dropped:
            log.info(
                "dropped %d of %d samples with empty labels or more than %d tokens",
                self.dropped,
                len(samples),
                max_tokens,
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from texlens.image import ImageError

        # A bad image (blank, corrupt) must not end a run hours long: say which, and train on the next sample.
        for attempt in range(len(self.items)):
            k = (index + attempt) % len(self.items)
            try:
                return self.load(k), self.items[k].ids
            except RuntimeError as exc:
                if not isinstance(exc.__cause__, ImageError):
                    raise
                if self.items[k].image not in self.bad_images:
                    self.bad_images.add(self.items[k].image)
                    log.warning("skipping unusable training image: %s", exc)
        raise RuntimeError("no usable training image in the dataset")

    def load(self, index: int) -> np.ndarray:
        """The preprocessed (and, when an augmentation is set, perturbed) image of sample ``index``."""
        from texlens.image import load_image, preprocess

        path = self.items[index].image
        try:
            image = load_image(path)
            if self.augment is not None:
                # Perturb the image as it was captured; preprocess then crops and scales whatever came out.
                image = self.augment(np.asarray(image))
            pixels = preprocess(image, self.preprocess_cfg)
        except Exception as exc:  # name the file: one bad image in 100k is otherwise hard to find
            raise RuntimeError(f"cannot load training image {path}: {exc}") from exc
        return np.ascontiguousarray(pixels, dtype=np.float32)

    def label(self, index: int) -> list[str]:
        """Canonical reference tokens of sample ``index``."""
        return self.items[index].latex.split()

    def image_path(self, index: int) -> Path:
        """Image file of sample ``index``."""
        return self.items[index].image

    def sizes(self, probe: int = 16) -> list[tuple[int, int]]:
        """Approximate preprocessed (height, width) per sample, for bucketing, without decoding every image.

        Headers give the raw sizes; preprocessing rescales glyphs to a standard height, and the scale is
        roughly constant within one dataset, so it is measured on ``probe`` images and applied to all.
        """
        raw = np.asarray([image_size(it.image) for it in self.items], dtype=np.float64).reshape(-1, 2)
        if len(raw) == 0:
            return []
        picks = np.random.default_rng(0).permutation(len(raw))[:probe]
        ratios = []
        for k in picks.tolist():
            try:
                ratios.append(np.asarray(self.load_plain(k).shape, dtype=np.float64) / raw[k])
            except RuntimeError:
                continue
        scale = np.median(ratios, axis=0) if ratios else np.ones(2)
        est = np.maximum(np.round(raw * scale), 1).astype(np.int64)
        return [(int(h), int(w)) for h, w in est]

    def load_plain(self, index: int) -> np.ndarray:
        """The preprocessed image of sample ``index`` without augmentation."""
        augment, self.augment = self.augment, None
        try:
            return self.load(index)
        finally:
            self.augment = augment


def pad_labels(labels: Sequence[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``<start> tokens <end>`` padded to the longest one given: (tgt_in = <start> + tokens, tgt_out = tokens + <end>)."""
    longest = max(len(ids) for ids in labels) - 1
    tgt_in = torch.full((len(labels), longest), pad_id, dtype=torch.long)
    tgt_out = torch.full((len(labels), longest), pad_id, dtype=torch.long)
    for k, ids in enumerate(labels):
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        tgt_in[k, : len(ids_t) - 1] = ids_t[:-1]
        tgt_out[k, : len(ids_t) - 1] = ids_t[1:]
    return tgt_in, tgt_out


def collate(batch: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int = 0) -> Batch:
    """Pad images to the batch's largest size (rounded up to a multiple of 16) and labels to its longest label."""
    if not batch:
        raise ValueError("empty batch")
    height = _round_up(max(img.shape[0] for img, _ in batch), PAD_MULTIPLE)
    width = _round_up(max(img.shape[1] for img, _ in batch), PAD_MULTIPLE)
    images = torch.zeros(len(batch), 1, height, width, dtype=torch.float32)  # 0 = background
    for k, (img, _) in enumerate(batch):
        images[k, 0, : img.shape[0], : img.shape[1]] = torch.from_numpy(np.asarray(img, dtype=np.float32))
    tgt_in, tgt_out = pad_labels([ids for _, ids in batch], pad_id)
    return Batch(images, tgt_in, tgt_out)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def mix_indices(
    lengths: Sequence[int], weights: Sequence[float], epoch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices into the concatenation of datasets so that dataset ``i`` supplies ``weights[i]`` of an epoch.

    A dataset smaller than its share is repeated (every sample equally often, +-1); a larger one is subsampled
    without replacement, freshly each epoch.
    """
    if len(lengths) != len(weights):
        raise ValueError("one weight per dataset")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"dataset weights must be >= 0 and not all 0, got {list(weights)}")
    total = float(sum(weights))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parts = []
    for offset, n, w in zip(offsets, lengths, weights, strict=True):
        share = int(round(epoch_size * w / total))
        if n == 0 or share == 0:
            continue
        repeats, rest = divmod(share, n)
        chosen = [rng.permutation(n) for _ in range(repeats)] + [rng.permutation(n)[:rest]]
        parts.append(offset + np.concatenate(chosen))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-size images, a fresh grouping and order each epoch.

    A batch holds at most ``batch_size`` samples and, if ``max_pixels`` is set, at most that many padded pixels
    (so batches of small formulas are larger than batches of long ones). With ``lengths``/``weights`` the epoch
    is a weighted mix of concatenated datasets (see :func:`mix_indices`). Under DDP each rank takes every
    ``num_replicas``-th batch, so Lightning's own distributed sampler must be off.
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        batch_size: int = 32,
        max_pixels: int | None = None,
        *,
        lengths: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
        epoch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.heights = np.asarray([s[0] for s in sizes], dtype=np.int64)
        self.widths = np.asarray([s[1] for s in sizes], dtype=np.int64)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.lengths = list(lengths) if lengths is not None else [len(sizes)]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.lengths)
        if sum(self.lengths) != len(sizes):
            raise ValueError(f"dataset lengths sum to {sum(self.lengths)} but there are {len(sizes)} sizes")
        self.epoch_size = epoch_size or len(sizes)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose grouping and order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        self.epoch += 1  # without set_epoch, consecutive epochs still differ
        yield from batches

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle or len(self.lengths) > 1 or self.epoch_size != len(self.heights):
            indices = mix_indices(self.lengths, self.weights, self.epoch_size, rng)
        else:
            indices = np.arange(len(self.heights))
        heights = self.heights[indices]
        widths = self.widths[indices].astype(np.float64)
        if self.shuffle:  # jitter the widths so batch membership changes between epochs
            widths = widths * np.exp(rng.uniform(-0.1, 0.1, size=len(widths)))
        order = indices[np.lexsort((widths, _round_up_array(heights, PAD_MULTIPLE)))]
        batches = self._fill(order)
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            usable = len(batches) // self.num_replicas * self.num_replicas
            if usable == 0:
                raise ValueError(f"{len(batches)} batches cannot be shared by {self.num_replicas} processes")
            batches = batches[:usable][self.rank :: self.num_replicas]
        self._cache = (epoch, batches)
        return batches

    def _fill(self, order: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        max_h = max_w = 0
        for idx in order.tolist():
            h = _round_up(int(self.heights[idx]), PAD_MULTIPLE)
            w = _round_up(int(self.widths[idx]), PAD_MULTIPLE)
            new_h, new_w = max(max_h, h), max(max_w, w)
            full = len(current) >= self.batch_size or (
                self.max_pixels is not None
                and current
                and (len(current) + 1) * new_h * new_w > self.max_pixels
            )
            if full:
                batches.append(current)
                current, new_h, new_w = [], h, w
            current.append(idx)
            max_h, max_w = new_h, new_w
        if current and not (self.drop_last and len(current) < self.batch_size):
            batches.append(current)
        return batches


def _round_up_array(values: np.ndarray, multiple: int) -> np.ndarray:
    return np.maximum(multiple, -(-values // multiple) * multiple)
