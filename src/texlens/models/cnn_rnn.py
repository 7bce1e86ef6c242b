"""CNN-RNN (seed report §3): CNN encoder, Bahdanau additive attention over the feature map, GRU decoder.

Each step: h_{t-1} -> attention weights a_t over the memory -> context c_t -> h_t = GRU([emb(y_{t-1}); c_t], h_{t-1})
-> logits from [h_t; c_t; emb(y_{t-1})].  Training by teacher forcing, scheduled sampling or free running.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from texlens.models.encoder import Encoder, EncoderConfig, ImageToLatex, encoder_config


@dataclass
class CnnRnnConfig:
    """Sizes of the CNN-RNN; ``encoder.d_model`` always follows ``d_model`` (the memory width)."""

    vocab_size: int
    d_model: int = 256
    embed_dim: int = 256
    hidden: int = 512
    attention_dim: int = 256
    out_dim: int = 384
    dropout: float = 0.1
    positional: bool = True  # add 2-D positions to the memory, so attention knows where it looks
    pad_id: int = 0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        self.encoder = encoder_config(self.encoder, self.d_model)


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score_s = v^T tanh(W_h h + W_m m_s), softmax over the memory positions s."""

    def __init__(self, hidden: int, d_memory: int, dim: int):
        super().__init__()
        self.w_h = nn.Linear(hidden, dim, bias=False)
        self.w_m = nn.Linear(d_memory, dim)
        self.v = nn.Linear(dim, 1, bias=False)

    def forward(
        self, h: torch.Tensor, memory: torch.Tensor, memory_proj: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (R, D) and weights (R, S); ``memory_proj`` = W_m memory, computed once per image.

        ``memory`` (B, S, D) may hold one row per image for g = R / B consecutive rows of ``h`` (R, hidden) each.
        """
        query = self.w_h(h).unflatten(0, (memory.shape[0], -1))  # (B, g, A)
        scores = self.v(torch.tanh(memory_proj[:, None] + query[:, :, None])).squeeze(-1)  # (B, g, S)
        weights = scores.float().softmax(-1).to(memory.dtype)
        return torch.bmm(weights, memory).flatten(0, 1), weights.flatten(0, 1)


class CnnRnn(ImageToLatex):
    """CNN encoder + GRU decoder with additive attention (the seed's CNN-RNN)."""

    name = "cnn-rnn"
    static_state = ("memory", "memory_proj")

    def __init__(self, config: CnnRnnConfig):
        super().__init__()
        self.config = config
        d, e, hid = config.d_model, config.embed_dim, config.hidden
        self.encoder = Encoder(config.encoder)
        self.embed = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_id)
        self.init_h = nn.Linear(d, hid)
        self.attention = AdditiveAttention(hid, d, config.attention_dim)
        self.cell = nn.GRUCell(e + d, hid)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Sequential(
            nn.Linear(hid + d + e, config.out_dim), nn.Tanh(), nn.Dropout(config.dropout)
        )
        self.head = nn.Linear(config.out_dim, config.vocab_size)
        # Stands in for an image when the decoder is pre-trained as a masked language model.
        self.null_memory = nn.Parameter(torch.randn(1, 1, d) * 0.02)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) -> memory (B, h*w, d_model)."""
        return self.encoder.memory(images, positional=self.config.positional)

    def init_state(self, memory: torch.Tensor) -> dict:
        """Initial hidden state from the mean memory; the attention projection of the memory, once."""
        return {
            "h": torch.tanh(self.init_h(memory.mean(1))),
            "memory": memory,
            "memory_proj": self.attention.w_m(memory),
        }

    def _advance(self, emb: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One GRU step from embedded tokens: (new hidden, context, attention weights)."""
        context, weights = self.attention(state["h"], state["memory"], state["memory_proj"])
        h = self.cell(torch.cat([emb, context], -1), state["h"])
        return h, context, weights

    def _logits(self, h: torch.Tensor, context: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.head(self.out(torch.cat([self.drop(h), context, emb], -1)))

    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Feed one token per row: (logits (B, V), new state, attention weights (B, S))."""
        emb = self.drop(self.embed(tokens))
        h, context, weights = self._advance(emb, state)
        return self._logits(h, context, emb), {**state, "h": h}, weights

    def decode(
        self, memory: torch.Tensor, tgt_in: torch.Tensor, teacher_forcing: float = 1.0
    ) -> torch.Tensor:
        """Logits (B, T, V) given memory; ``teacher_forcing`` < 1 feeds back own predictions (scheduled sampling)."""
        state = self.init_state(memory)
        b, t = tgt_in.shape
        if teacher_forcing >= 1.0:
            # Inputs are known in advance: run the recurrence, then the output layer once for all steps.
            embs = self.drop(self.embed(tgt_in))
            hs, contexts = [], []
            for i in range(t):
                h, context, _ = self._advance(embs[:, i], state)
                state["h"] = h
                hs.append(h)
                contexts.append(context)
            return self._logits(torch.stack(hs, 1), torch.stack(contexts, 1), embs)
        logits = []
        tokens = tgt_in[:, 0]
        for i in range(t):
            step_logits, state, _ = self.step(tokens, state)
            logits.append(step_logits)
            if i + 1 < t:
                # Per row: with probability teacher_forcing the gold token, otherwise the model's own argmax.
                gold = torch.rand(b, device=tgt_in.device) < teacher_forcing
                tokens = torch.where(gold, tgt_in[:, i + 1], step_logits.argmax(-1))
        return torch.stack(logits, 1)

    def forward(
        self, images: torch.Tensor, tgt_in: torch.Tensor, teacher_forcing: float = 1.0
    ) -> torch.Tensor:
        """Logits (B, T, V); 1.0 = teacher forcing, between 0 and 1 = scheduled sampling, 0.0 = free running.

        Positions past a target's end hold ``<pad>`` inputs; their logits are computed and the loss masks them.
        """
        return self.decode(self.encode(images), tgt_in, teacher_forcing)

    def decode_embeddings_only(self, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits without an image (a learned one-position memory): the decoder as a language model."""
        return self.decode(self.null_memory.expand(tgt_in.shape[0], 1, -1), tgt_in)
