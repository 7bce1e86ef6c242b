"""Masked-language-model pre-training of the decoder on formulas alone (seed report §4.3 (4), after BERT §3.1).

Of the decoder's input tokens, 15 % are chosen; of those 80 % become ``[MASK]``, 10 % a random token and 10 % stay.
The decoder reads the corrupted sequence without an image (``model.decode_embeddings_only``) and is trained on the
uncorrupted next tokens at every position: it learns LaTeX's grammar (balanced braces, ``\\frac`` takes two groups)
before it sees pixels. Fine-tuning then starts from the exported model with ``init_from: OUT/model``.
Run it with ``mode: mlm`` in a training config (see configs/mlm.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from texlens.data.dataset import pad_labels
from texlens.latex import SPECIAL_TOKENS, Vocab
from texlens.training import TrainConfig, _LitBase

__all__ = ["LitMaskedLM", "TextDataModule", "FormulaTextDataset", "collate_text", "corrupt"]


def corrupt(
    tgt_in: torch.Tensor,
    vocab_size: int,
    *,
    prob: float = 0.15,
    mask_share: float = 0.8,
    random_share: float = 0.1,
    mask_id: int = Vocab.mask_id,
    pad_id: int = Vocab.pad_id,
    start_id: int = Vocab.start_id,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT corruption of decoder inputs: returns (corrupted copy, bool mask of the chosen positions).

    ``<pad>`` and ``<start>`` are never chosen; random replacements are ordinary tokens, never specials.
    """
    eligible = (tgt_in != pad_id) & (tgt_in != start_id)
    draw = torch.rand(tgt_in.shape, generator=generator, device=tgt_in.device)
    chosen = eligible & (draw < prob)
    # A second draw splits the chosen positions into [MASK] / random / unchanged.
    how = torch.rand(tgt_in.shape, generator=generator, device=tgt_in.device)
    to_mask = chosen & (how < mask_share)
    to_random = chosen & (how >= mask_share) & (how < mask_share + random_share)
    random_tokens = torch.randint(
        len(SPECIAL_TOKENS), vocab_size, tgt_in.shape, generator=generator, device=tgt_in.device
    )
    out = tgt_in.clone()
    out[to_mask] = mask_id
    out[to_random] = random_tokens[to_random]
    return out, chosen


class FormulaTextDataset(Dataset):
    """Token ids (``<start> ... <end>``) of canonical formulas; no images."""

    def __init__(self, formulas: Sequence[str], vocab: Vocab, max_tokens: int = 200):
        self.ids = [
            np.asarray(vocab.encode(f), dtype=np.int64) for f in formulas if 0 < len(f.split()) <= max_tokens
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.ids[index]


def collate_text(
    batch: Sequence[np.ndarray], pad_id: int = Vocab.pad_id
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the batch's longest formula: (tgt_in = <start> + tokens, tgt_out = tokens + <end>)."""
    return pad_labels(batch, pad_id)


class TextDataModule(pl.LightningDataModule):
    """The formulas of the training and validation sets, as text."""

    def __init__(
        self, cfg: TrainConfig, vocab: Vocab, train_samples: list[list[Any]], val_samples: list[list[Any]]
    ):
        super().__init__()
        self.cfg = cfg
        train = [s.latex for samples in train_samples for s in samples]
        # One pooled validation set: sets that may not choose the checkpoint (select: false) stay out of it.
        val = [
            s.latex
            for samples, spec in zip(val_samples, cfg.val, strict=True)
            if spec.select
            for s in samples
        ]
        self.train_set = FormulaTextDataset(train, vocab, cfg.max_tokens)
        self.val_set = FormulaTextDataset(val, vocab, cfg.max_tokens)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate_text,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, collate_fn=collate_text)


class LitMaskedLM(_LitBase):
    """Decoder-only training on corrupted formulas; validation corrupts too (as the seed did) with a fixed seed."""

    monitor, monitor_mode = "val/loss", "min"

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict:
        tgt_in, tgt_out = batch
        cfg = self.cfg
        corrupted, chosen = corrupt(
            tgt_in,
            len(self.vocab),
            prob=cfg.mlm_prob,
            mask_share=cfg.mlm_mask,
            random_share=cfg.mlm_random,
            generator=generator,
        )
        logits = self.model.decode_embeddings_only(corrupted)
        loss = self.token_loss(logits, tgt_out)
        predicted = logits.argmax(-1)
        real = tgt_out != self.vocab.pad_id
        return {
            "loss": loss,
            "accuracy": (predicted == tgt_out)[real].float().mean(),
            "corrupted_share": chosen.sum() / real.sum().clamp(min=1),
        }

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._step(batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch[0].shape[0])
        self.log("train/accuracy", out["accuracy"], batch_size=batch[0].shape[0])
        return out["loss"]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # The same corruption at every validation, so the numbers are comparable over time.
        generator = torch.Generator(device=batch[0].device).manual_seed(self.cfg.seed * 7919 + batch_idx)
        out = self._step(batch, generator)
        size = batch[0].shape[0]
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/accuracy", out["accuracy"], batch_size=size, sync_dist=True)
