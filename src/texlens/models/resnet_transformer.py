"""ResNet-Transformer (seed report §4.2, after kingyiusuen/image-to-latex).

image -> ResNet encoder -> 1x1 projection -> 2-D sinusoidal positions -> memory (B, S, D)
tokens -> embedding + 1-D positions -> pre-norm Transformer decoder (causal self-attention with a KV cache,
cross-attention to the memory) -> logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from texlens.models.encoder import (
    Encoder,
    EncoderConfig,
    ImageToLatex,
    encoder_config,
    sinusoid_1d,
)


@dataclass
class ResNetTransformerConfig:
    """Sizes of the ResNet-Transformer; ``encoder.d_model`` always follows ``d_model``."""

    vocab_size: int
    d_model: int = 256
    n_layers: int = 3
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 512
    learned_positions: bool = False
    tie_weights: bool = True
    pad_id: int = 0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        self.encoder = encoder_config(self.encoder, self.d_model)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value projections (keys/values can be cached)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.scale = (d_model // n_heads) ** -0.5
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, D / H)."""
        # No sizes read off the tensor: in an exported graph each would be a chain of shape operators per step.
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, T, D / H) of ``x``."""
        k, v = self.key_value(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` (B, T, D) to keys/values; ``mask`` is True where attending is allowed."""
        q = self.heads(self.query(x))
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-1, -2)) * self.scale
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.float().softmax(-1)
            y = weights.to(v.dtype) @ v
        else:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)
        return self.out(y.transpose(1, 2).flatten(2)), weights


class DecoderLayer(nn.Module):
    """Pre-norm Transformer decoder layer: causal self-attention, cross-attention, feed-forward."""

    def __init__(self, config: ResNetTransformerConfig):
        super().__init__()
        d = config.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, config.n_heads, config.dropout)
        self.cross_attn = MultiHeadAttention(d, config.n_heads, config.dropout)
        self.ff = nn.Sequential(nn.Linear(d, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        self_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """One layer: (output, self-attention keys/values including ``past``, cross-attention weights)."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        a, _ = self.self_attn(h, k, v, mask=self_mask)
        x = x + self.drop(a)
        # The memory's keys/values may hold one row per image for g rows of x each (beam search's hypotheses):
        # the g rows' queries attend together, as g*T positions of one row, and nothing is copied per row.
        # Cross-attention has no mask, so this is the same computation as g copies of the memory.
        h = self.norm2(x)
        q = h.reshape(cross_kv[0].shape[0], -1, h.shape[-1])
        a, weights = self.cross_attn(q, *cross_kv, need_weights=need_weights)
        x = x + self.drop(a.reshape(x.shape))
        if weights is not None:  # (B, H, g*T, S) -> (R, H, T, S)
            weights = weights.unflatten(2, (-1, x.shape[1])).transpose(1, 2).flatten(0, 1)
        return x + self.drop(self.ff(self.norm3(x))), (k, v), weights


class ResNetTransformer(ImageToLatex):
    """ResNet encoder + Transformer decoder with a KV cache for incremental decoding."""

    name = "resnet-transformer"
    static_state = ("cross_k", "cross_v")

    def __init__(self, config: ResNetTransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.encoder = Encoder(config.encoder)
        self.embed = nn.Embedding(config.vocab_size, d)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        if config.learned_positions:
            self.positions = nn.Embedding(config.max_len, d)
            nn.init.normal_(self.positions.weight, std=0.02)
        else:
            self.register_buffer("position_table", sinusoid_1d(config.max_len, d), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.embed.weight
        # Stands in for an image when the decoder is pre-trained as a masked language model.
        self.null_memory = nn.Parameter(torch.randn(1, 1, d) * 0.02)

    # --- image side -------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) -> memory (B, h*w, d_model) with 2-D positions."""
        return self.encoder.memory(images)

    # --- token side -------------------------------------------------------------------------------------------
    def embed_tokens(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embeddings (B, T, D) scaled by sqrt(D), plus positions ``start .. start+T-1``."""
        t = tokens.shape[1]
        if start + t > self.config.max_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_len {self.config.max_len}")
        x = self.embed(tokens) * math.sqrt(self.config.d_model)
        if self.config.learned_positions:
            pos = self.positions.weight[start : start + t]
        else:
            pos = self.position_table[start : start + t]
        return self.drop(x + pos.to(x.dtype))

    def decode(self, memory: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for inputs ``tgt_in`` (B, T) given memory (B, S, D)."""
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()
        keep = tgt_in != self.config.pad_id  # (B, T): padding keys are ignored
        # Every query may see itself, so no row is fully masked (a pad row would otherwise give NaN).
        mask = (causal & keep[:, None, :]) | torch.eye(t, dtype=torch.bool, device=tgt_in.device)
        mask = mask[:, None]  # (B, 1, T, T), broadcast over heads
        x = self.embed_tokens(tgt_in)
        for layer in self.layers:
            x, _, _ = layer(x, layer.cross_attn.keys_values(memory), mask)
        return self.head(self.norm(x))

    def forward(self, images: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the next token at each position of ``tgt_in`` (teacher forcing)."""
        return self.decode(self.encode(images), tgt_in)

    def decode_embeddings_only(self, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits without an image (a learned one-position memory): the decoder as a language model."""
        return self.decode(self.null_memory.expand(tgt_in.shape[0], 1, -1), tgt_in)

    # --- incremental decoding ---------------------------------------------------------------------------------
    def init_state(self, memory: torch.Tensor) -> dict:
        """Cross-attention keys/values of the memory (once) and empty self-attention caches."""
        b = memory.shape[0]
        d_head = self.config.d_model // self.config.n_heads
        empty = memory.new_zeros(b, self.config.n_heads, 0, d_head)
        cross = [layer.cross_attn.keys_values(memory) for layer in self.layers]
        return {
            "cross_k": [k for k, _ in cross],
            "cross_v": [v for _, v in cross],
            "self_k": [empty] * len(self.layers),
            "self_v": [empty] * len(self.layers),
            "pos": 0,
        }

    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Feed one token per row; the prefix is never recomputed (its keys/values are in the state)."""
        x = self.embed_tokens(tokens[:, None], start=state["pos"])
        self_k, self_v = [], []
        weights = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            cross = (state["cross_k"][i], state["cross_v"][i])
            past = (state["self_k"][i], state["self_v"][i])
            x, (k, v), weights = layer(x, cross, past=past, need_weights=last)
            self_k.append(k)
            self_v.append(v)
        logits = self.head(self.norm(x[:, 0]))
        new_state = {**state, "self_k": self_k, "self_v": self_v, "pos": state["pos"] + 1}
        return logits, new_state, weights[:, :, 0].mean(1)
