"""ResNet-style CNN encoder for formula images (1 channel, ink = 1 on 0), with optional SE / CBAM / ECA attention.

Formulas are wide and short, so the encoder downsamples height more than width: the default total stride is
16 in height and 8 in width.  A 64x512 image then gives a 4x64 feature map, 256 memory positions: about one
column per 8 pixels, finer than a glyph (~12-20 px wide after preprocessing), so neighbouring symbols of long
formulas (often > 100 tokens in 512 px) get distinct columns, while 16x16 (4x32 = 128 positions) would put two
narrow glyphs in one column.  Cross-attention over 256 positions costs little next to the CNN itself.
The stem and the first two stages halve both sides (the first stage already works at 1/4 resolution, as in
ResNet), the third halves only the height and the last keeps the resolution: most of the compute then sits in
few positions with many channels, which keeps the CPU cost of a 64x256 image near 0.4 GMAC.

``atrous`` turns a stage's stride into a dilation of the later convolutions (DeepLab's "a trous" trick): the
third stage a trous gives a stride of 8 x 8 (8 rows for a 64-pixel-high image instead of 4) with the very same
weights, so a model trained with stride 16 starts a finer one exactly where it was (every other row of the new
map is the old map, and the positional encoding counts rows in the old units). A stage can also go a trous along
one axis only (``"height"`` or ``"width"``): the second stage a trous in height gives a stride of 4 x 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("none", "se", "cbam", "eca")
ATROUS_AXES = ("height", "width")  # besides True (both axes) and False


def _atrous_entry(value: bool | str) -> bool | str:
    if isinstance(value, str):
        if value not in ATROUS_AXES:
            raise ValueError(f"an atrous entry is true, false or one of {ATROUS_AXES}, not {value!r}")
        return value
    return bool(value)


def atrous_axes(entry: bool | str) -> tuple[bool, bool]:
    """(height, width): along which axes a stage's ``atrous`` entry turns its stride into a dilation."""
    return (entry is True or entry == "height", entry is True or entry == "width")


@dataclass
class EncoderConfig:
    """Sizes of the CNN encoder; ``strides`` are (height, width) per stage after the stride-2 stem."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 2, 2, 2)
    strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 1), (1, 1))
    d_model: int = 256
    attention: str = "none"
    dropout: float = 0.1
    # Per stage: True turns that stage's stride into a dilation of every later 3x3 convolution ("a trous", as
    # in DeepLab). The feature map keeps the stage's input resolution while each later layer sees the same
    # receptive field as before, so a model trained with strides computes, at every other row (or column),
    # exactly what it computed before: a finer map can start from a coarser model's weights. Empty: none.
    # "height" or "width" does so along that axis only.
    atrous: tuple[bool | str, ...] = ()

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the dataclass hashable and comparable.
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        self.strides = tuple((int(s[0]), int(s[1])) for s in self.strides)
        self.atrous = tuple(_atrous_entry(a) for a in self.atrous) or (False,) * len(self.strides)
        if not (len(self.widths) == len(self.blocks) == len(self.strides) == len(self.atrous)):
            raise ValueError("widths, blocks, strides and atrous need one entry per stage")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, not {self.attention!r}")

    @property
    def conv_strides(self) -> tuple[tuple[int, int], ...]:
        """The stride each stage's first convolution applies: 1 along the axes where the stage is a trous."""
        strides = []
        for (h, w), a in zip(self.strides, self.atrous, strict=True):
            ah, aw = atrous_axes(a)
            strides.append((1 if ah else h, 1 if aw else w))
        return tuple(strides)

    @property
    def density(self) -> tuple[int, int]:
        """How many feature rows and columns the a trous stages put where the strided model had one."""
        dh, dw = 1, 1
        for (h, w), a in zip(self.strides, self.atrous, strict=True):
            ah, aw = atrous_axes(a)
            dh, dw = dh * (h if ah else 1), dw * (w if aw else 1)
        return dh, dw

    @property
    def total_stride(self) -> tuple[int, int]:
        """Downsampling factor (height, width) from image to feature map."""
        sh, sw = 2, 2  # the stem
        for h, w in self.conv_strides:
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
    """ResNet basic block: two 3x3 conv-BN layers, attention on the residual branch, projection shortcut.

    ``dilation`` is that of the first convolution (on the block's input grid) and ``dilation_out`` that of the
    second (on its output grid); they differ in the first block of an a trous stage, whose shortcut keeps the
    projection its strided original had (``project``).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: tuple[int, int],
        attention: str,
        dilation: tuple[int, int] = (1, 1),
        dilation_out: tuple[int, int] | None = None,
        project: bool = False,
    ):
        super().__init__()
        dilation_out = dilation_out or dilation
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=dilation_out, dilation=dilation_out, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.attention = make_attention(attention, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if project or c_in != c_out or stride != (1, 1):
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
        dilation = (1, 1)  # of the strided model's grid on this one's, grown by each a trous stage
        for width, n_blocks, stride, conv_stride in zip(
            config.widths, config.blocks, config.strides, config.conv_strides, strict=True
        ):
            first_in, project = dilation, stride != (1, 1)
            # an a trous axis keeps its resolution (conv stride 1) and dilates every later convolution instead
            dilation = (dilation[0] * stride[0] // conv_stride[0], dilation[1] * stride[1] // conv_stride[1])
            stride = conv_stride
            blocks = [BasicBlock(c_in, width, stride, config.attention, first_in, dilation, project)]
            blocks += [
                BasicBlock(width, width, (1, 1), config.attention, dilation) for _ in range(n_blocks - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(c_in, config.d_model, 1)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map of a batch of images (ink = 1 on 0)."""
        return self.dropout(self.proj(self.stages(self.stem(images))))

    def memory(self, images: torch.Tensor, positional: bool = True) -> torch.Tensor:
        """Flattened memory (B, h*w, d_model) of a batch, positions counted on the strided model's grid."""
        dh, dw = self.config.density
        return flatten_memory(self(images), positional, step=(1.0 / dh, 1.0 / dw))

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the feature map for an image of ``height`` x ``width`` pixels."""
        h, w = height, width
        for conv_stride in [(2, 2), *self.config.conv_strides]:
            # 3x3 conv, padding 1: out = floor((n - 1) / s) + 1
            h, w = (h - 1) // conv_stride[0] + 1, (w - 1) // conv_stride[1] + 1
        return h, w


def sinusoid_1d(length: int, dim: int, device: torch.device | None = None, step: float = 1.0) -> torch.Tensor:
    """Sinusoidal position table (length, dim) of "Attention is all you need", positions 0, step, 2 step..."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None] * step
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def sinusoid_2d(
    height: int,
    width: int,
    dim: int,
    device: torch.device | None = None,
    step: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """2-D sinusoidal encoding (dim, height, width): half the channels encode the row, half the column."""
    half = dim // 2
    rows = sinusoid_1d(height, half, device, step[0])  # (h, half)
    cols = sinusoid_1d(width, dim - half, device, step[1])  # (w, dim - half)
    pe = torch.cat(
        [rows.T[:, :, None].expand(half, height, width), cols.T[:, None, :].expand(dim - half, height, width)]
    )
    return pe


def flatten_memory(
    features: torch.Tensor, positional: bool = True, step: tuple[float, float] = (1.0, 1.0)
) -> torch.Tensor:
    """Feature map (B, D, h, w) -> memory (B, h*w, D), row-major, with the 2-D positional encoding added."""
    b, d, h, w = features.shape
    if positional:
        features = features + sinusoid_2d(h, w, d, features.device, step).to(features.dtype)
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
        """Decoder state before the first token, from the memory of ``encode``: one row per image."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Feed one token per row: (logits (R, V), new state, cross-attention (R, S)).

        The state's ``static_state`` parts hold one row per image (B), the rest one row per hypothesis (R): the
        R rows are the B images' hypotheses, g = R / B consecutive rows per image (beam search decodes g beams
        of every image against one copy of its memory).
        """
        raise NotImplementedError

    # Keys of the decoder state that hold what never changes while one image is decoded (its memory, the
    # cross-attention keys/values of it): one row per image, however many hypotheses decode that image.
    static_state: tuple[str, ...] = ()

    def reorder_state(self, state: dict, index: torch.Tensor, images: torch.Tensor | None = None) -> dict:
        """State of the hypothesis rows ``index`` (beam search keeps, drops and duplicates hypotheses).

        ``images``: the images still decoded (rows of the ``static_state`` parts), in order; None keeps them all
        where they are. The new rows must stay grouped by image, the same number per image.
        """
        return {
            k: (v if images is None else reorder(v, images)) if k in self.static_state else reorder(v, index)
            for k, v in state.items()
        }

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the attention map for an image of ``height`` x ``width``; S = h * w."""
        return self.encoder.feature_shape(height, width)
