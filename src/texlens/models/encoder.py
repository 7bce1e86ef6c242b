"""ResNet-style CNN encoder for formula images (1 channel, ink = 1 on 0), with optional SE / CBAM / ECA attention.

Formulas are wide and short, so the encoder downsamples height more than width: the default total stride is
16 in height and 8 in width.  A 64x512 image then gives a 4x64 feature map, 256 memory positions: about one
column per 8 pixels, finer than a glyph (~12-20 px wide after preprocessing), so neighbouring symbols of long
formulas (often > 100 tokens in 512 px) get distinct columns, while 16x16 (4x32 = 128 positions) would put two
narrow glyphs in one column.  Cross-attention over 256 positions costs little next to the CNN itself.
The stem and the first two stages halve both sides (the first stage already works at 1/4 resolution, as in
ResNet), the third halves only the height and the last keeps the resolution: most of the compute then sits in
few positions with many channels, which keeps the CPU cost of a 64x256 image near 0.4 GMAC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("none", "se", "cbam", "eca")


@dataclass
class EncoderConfig:
    """Sizes of the CNN encoder; ``strides`` are (height, width) per stage after the stride-2 stem."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 2, 2, 2)
    strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 1), (1, 1))
    d_model: int = 256
    attention: str = "none"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the dataclass hashable and comparable.
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        self.strides = tuple((int(s[0]), int(s[1])) for s in self.strides)
        if not (len(self.widths) == len(self.blocks) == len(self.strides)):
            raise ValueError("widths, blocks and strides need one entry per stage")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, not {self.attention!r}")

    @property
    def total_stride(self) -> tuple[int, int]:
        """Downsampling factor (height, width) from image to feature map."""
        sh, sw = 2, 2  # the stem
        for h, w in self.strides:
            sh, sw = sh * h, sw * w
        return sh, sw


def encoder_config(value: EncoderConfig | dict, d_model: int) -> EncoderConfig:
    """An ``EncoderConfig`` (from a dict when read from JSON) whose ``d_model`` follows the decoder's."""
    if isinstance(value, dict):
        return EncoderConfig(**{**value, "d_model": d_model})
    return replace(value, d_model=d_model)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global average pool -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al. 2020): a 1-D convolution across pooled channels instead of SE's MLP."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1):
        super().__init__()
        k = int(abs(math.log2(channels) + b) / gamma)
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))  # (B, C)
        gate = torch.sigmoid(self.conv(s.unsqueeze(1))).squeeze(1)
        return x * gate[:, :, None, None]


class ConvBlockAttention(nn.Module):
    """CBAM (Woo et al. 2018): channel attention from avg+max pooling, then a 7x7 spatial attention map."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean((2, 3), keepdim=True)
        mx = x.amax((2, 3), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def make_attention(kind: str, channels: int) -> nn.Module:
    """The attention module named ``kind`` for ``channels`` channels (identity for "none")."""
    if kind == "se":
        return SqueezeExcite(channels)
    if kind == "cbam":
        return ConvBlockAttention(channels)
    if kind == "eca":
        return EfficientChannelAttention(channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers, attention on the residual branch, projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int], attention: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.attention = make_attention(attention, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if c_in != c_out or stride != (1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.attention(self.bn2(self.conv2(y)))
        return F.relu(y + self.shortcut(x))


class Encoder(nn.Module):
    """Image (B, 1, H, W) -> feature map (B, d_model, H / sh, W / sw)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c0 = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(1, c0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU()
        )
        stages = []
        c_in = c0
        for width, n_blocks, stride in zip(config.widths, config.blocks, config.strides, strict=True):
            blocks = [BasicBlock(c_in, width, stride, config.attention)]
            blocks += [BasicBlock(width, width, (1, 1), config.attention) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(c_in, config.d_model, 1)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map of a batch of images (ink = 1 on 0)."""
        return self.dropout(self.proj(self.stages(self.stem(images))))

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the feature map for an image of ``height`` x ``width`` pixels."""
        h, w = height, width
        for conv_stride in [(2, 2), *self.config.strides]:
            # 3x3 conv, padding 1: out = floor((n - 1) / s) + 1
            h, w = (h - 1) // conv_stride[0] + 1, (w - 1) // conv_stride[1] + 1
        return h, w


def sinusoid_1d(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal position table (length, dim) of "Attention is all you need"."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def sinusoid_2d(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """2-D sinusoidal encoding (dim, height, width): half the channels encode the row, half the column."""
    half = dim // 2
    rows = sinusoid_1d(height, half, device)  # (h, half)
    cols = sinusoid_1d(width, dim - half, device)  # (w, dim - half)
    pe = torch.cat(
        [rows.T[:, :, None].expand(half, height, width), cols.T[:, None, :].expand(dim - half, height, width)]
    )
    return pe


def flatten_memory(features: torch.Tensor, positional: bool = True) -> torch.Tensor:
    """Feature map (B, D, h, w) -> memory (B, h*w, D), row-major, with the 2-D positional encoding added."""
    b, d, h, w = features.shape
    if positional:
        features = features + sinusoid_2d(h, w, d, features.device).to(features.dtype)
    return features.flatten(2).transpose(1, 2).contiguous()


def reorder(state: object, index: torch.Tensor) -> object:
    """Select rows ``index`` of every tensor in a (nested dict/list) decoder state; other values are kept."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: reorder(v, index) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(reorder(v, index) for v in state)
    return state


class ImageToLatex(nn.Module):
    """What every texlens model offers: encode, forward (teacher forcing), init_state/step for decoding."""

    name: str = ""
    encoder: Encoder

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) -> memory (B, S, D)."""
        raise NotImplementedError

    def init_state(self, memory: torch.Tensor) -> dict:
        """Decoder state before the first token, from the memory of ``encode``."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Feed one token per row: (logits (B, V), new state, cross-attention (B, S))."""
        raise NotImplementedError

    def reorder_state(self, state: dict, index: torch.Tensor) -> dict:
        """State of the rows ``index`` (beam search keeps, drops and duplicates hypotheses)."""
        return reorder(state, index)  # type: ignore[return-value]

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the attention map for an image of ``height`` x ``width``; S = h * w."""
        return self.encoder.feature_shape(height, width)
