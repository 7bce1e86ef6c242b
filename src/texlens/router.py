"""Training the handwriting router (``texlens.models.router``): ``mode: router`` in a training config.

The training and validation sets are the usual ones; a set's ``handwritten: true`` makes its images the
"handwritten" class, every other set is "printed". Images are preprocessed at the printed scale (what the router
sees in the Predictor) and augmented as in supervised training, batches mix the sets by their weights, and the
run keeps the checkpoint with the best mean accuracy over the validation sets. The output folder's ``model/``
holds ``router.safetensors`` and ``router.json``; copy them into a model directory to attach the router:
``cp runs/router/model/router.* src/texlens/weights/default/`` (see configs/router.yaml).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from texlens.data.dataset import FormulaDataset, mix_indices
from texlens.image import batch_images
from texlens.latex import Vocab
from texlens.models.router import HandwritingRouter, RouterConfig, save_router
from texlens.training import (
    MODEL_DIR,
    FormulaDataModule,
    TrainConfig,
    _augmenters,
    _load_checkpoint,
    _preprocess_config,
    _read_spec,
    _spec_name,
    _val_subset,
    build_trainer,
    lr_factor,
    prepare_output,
    write_summary,
)

__all__ = [
    "LitRouter",
    "MixedBatchSampler",
    "RouterDataModule",
    "RouterDataset",
    "collate_router",
    "train_router",
]

log = logging.getLogger(__name__)


class RouterDataset(Dataset):
    """A formula dataset's images, each cut to the router's window (random with ``seed``, else the middle), with
    one class for all: 1.0 = handwritten, 0.0 = printed."""

    def __init__(
        self, formulas: FormulaDataset, handwritten: bool, config: RouterConfig, seed: int | None = None
    ):
        self.formulas, self.label, self.config = formulas, float(handwritten), config
        self.seed, self._rng = seed, None

    def __len__(self) -> int:
        return len(self.formulas)

    def __getitem__(self, index: int) -> tuple[np.ndarray, float]:
        if self.seed is not None and self._rng is None:  # per process: DataLoader workers draw their own
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.id if info else 0])
        return self.config.cut(self.formulas[index][0], self._rng), self.label

    def sizes(self) -> list[tuple[int, int]]:
        return self.formulas.sizes()


def collate_router(
    batch: Sequence[tuple[np.ndarray, float]],
) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
    """Images padded with background to the largest (B, 1, H, W), each one's (h, w), and the classes (B,)."""
    images, sizes = batch_images([image for image, _ in batch])
    return images, sizes, torch.tensor([label for _, label in batch], dtype=torch.float32)


class MixedBatchSampler(Sampler[list[int]]):
    """Batches drawn at random from the weighted mix of all sets, sizes ignored: each batch holds both classes.

    (Size buckets would put one set's images together, and one-class batches teach a classifier little.)
    """

    def __init__(
        self,
        lengths: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        epoch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.lengths, self.weights, self.batch_size = list(lengths), list(weights), batch_size
        self.epoch_size, self.seed, self.num_replicas, self.rank = epoch_size, seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(mix_indices(self.lengths, self.weights, self.epoch_size, rng))
        batches = [
            order[k : k + self.batch_size].tolist()
            for k in range(0, len(order) - self.batch_size + 1, self.batch_size)
        ]
        return batches[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return len(self._batches(self.epoch))

    def __iter__(self):
        batches = self._batches(self.epoch)
        self.epoch += 1
        yield from batches


class RouterDataModule(FormulaDataModule):
    """Training batches mixed across all sets (``MixedBatchSampler``); validation loaders and batching as
    ``FormulaDataModule``'s, with the router's (image, class) samples."""

    collate_fn = staticmethod(collate_router)
    # Thousands of small images per validation from a process of a few hundred MB: workers pay here.
    val_workers = None

    def __init__(
        self,
        cfg: TrainConfig,
        train_samples: list[list[Any]],
        val_samples: list[list[Any]],
        router: RouterConfig,
    ):
        pl.LightningDataModule.__init__(self)  # not FormulaDataModule's: these sets are built differently
        self.cfg = cfg
        # Labels only decide which samples FormulaDataset keeps (not empty, not too long); any vocabulary does.
        vocab = Vocab.build(s.latex for samples in train_samples + val_samples for s in samples)
        pre = _preprocess_config(cfg)  # the printed scale: what the router sees in the Predictor
        self.train_sets = [
            RouterDataset(
                FormulaDataset(s, vocab, pre, augment, cfg.max_tokens),
                spec.handwritten,
                router,
                cfg.seed + k,
            )
            for k, (s, spec, augment) in enumerate(
                zip(train_samples, cfg.train, _augmenters(cfg), strict=True)
            )
        ]
        self.val_sets = [
            RouterDataset(FormulaDataset(s, vocab, pre, None, cfg.max_tokens), spec.handwritten, router)
            for s, spec in zip(val_samples, cfg.val, strict=True)
        ]
        self.val_names = [_spec_name(s) for s in cfg.val]

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._replicas()
        lengths = [len(ds) for ds in self.train_sets]
        sampler = MixedBatchSampler(
            lengths,
            [spec.weight for spec in self.cfg.train],
            self.cfg.batch_size,
            self.cfg.epoch_size or sum(lengths),
            seed=self.cfg.seed,
            num_replicas=replicas,
            rank=rank,
        )
        return self._loader(ConcatDataset(self.train_sets), sampler, True)


class LitRouter(pl.LightningModule):
    """Binary cross-entropy on "handwritten"; validation accuracy per set, their mean picks the checkpoint."""

    monitor, monitor_mode = "val/accuracy", "max"

    def __init__(self, router: HandwritingRouter, cfg: TrainConfig, val_names: Sequence[str] = ()):
        super().__init__()
        self.router, self.cfg, self.val_names = router, cfg, list(val_names)
        self._val: dict[int, list[float]] = {}

    def training_step(self, batch: tuple[torch.Tensor, list, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, sizes, labels = batch
        loss = F.binary_cross_entropy_with_logits(self.router(images, sizes).float(), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(
        self, batch: tuple[torch.Tensor, list, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, sizes, labels = batch
        logits = self.router(images, sizes).float()
        state = self._val.setdefault(dataloader_idx, [0.0, 0.0, 0.0])  # right, seen, summed loss
        state[0] += float(((logits > 0).float() == labels).sum())
        state[1] += len(labels)
        state[2] += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        accuracies, losses = [], []
        for idx, (right, seen, loss) in sorted(self._val.items()):
            name = self.val_names[idx] if idx < len(self.val_names) else f"set{idx}"
            accuracy, mean_loss = right / max(seen, 1), loss / max(seen, 1)
            self.log(f"val/{name}/accuracy", accuracy, sync_dist=True, add_dataloader_idx=False)
            self.log(f"val/{name}/loss", mean_loss, sync_dist=True, add_dataloader_idx=False)
            if self.cfg.selects(idx):  # select: false sets are watched only
                accuracies.append(accuracy)
                losses.append(mean_loss)
        # The unweighted mean over sets: a small handwritten set counts as much as a large printed one.
        mean = sum(accuracies) / len(accuracies)
        self.log("val/accuracy", mean, sync_dist=True, add_dataloader_idx=False, prog_bar=True)
        self.log("val/loss", sum(losses) / len(losses), sync_dist=True, add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.router.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.cfg))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _check_classes(cfg: TrainConfig) -> None:
    for part in ("train", "val"):
        flags = {spec.handwritten for spec in getattr(cfg, part)}
        if flags != {True, False}:
            raise ValueError(
                f"mode: router needs handwritten and printed {part} sets: mark the handwritten ones with "
                f"`handwritten: true` (now {'all' if flags == {True} else 'none'} of them are)"
            )


def train_router(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train the router as ``cfg`` says; returns ``OUT/model`` with router.safetensors and router.json."""
    _check_classes(cfg)
    options = dict(cfg.model_options)
    known = {f.name for f in fields(RouterConfig)} - {"preprocess"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"model_options {unknown} are not router settings (known: {', '.join(sorted(known))})"
        )
    out, resume_from = prepare_output(cfg, resume)
    train_samples = [_read_spec(spec) for spec in cfg.train]
    val_samples = [_val_subset(_read_spec(spec), cfg.val_samples) for spec in cfg.val]
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False), encoding="utf-8")

    router = HandwritingRouter(RouterConfig(preprocess=dict(cfg.preprocess), **options))
    datamodule = RouterDataModule(cfg, train_samples, val_samples, router.config)
    lit = LitRouter(router, cfg, datamodule.val_names)
    trainer, best = build_trainer(cfg, lit, resume_from)
    started = time.time()
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from if resume else None)
    if not trainer.is_global_zero:
        return out / MODEL_DIR
    if best.best_model_path and Path(best.best_model_path).is_file():
        state = _load_checkpoint(Path(best.best_model_path))["state_dict"]
        router.load_state_dict({k[len("router.") :]: v for k, v in state.items() if k.startswith("router.")})
    model_dir = save_router(router.cpu().float().eval(), out / MODEL_DIR)
    parameters = sum(p.numel() for p in router.parameters())
    summary = write_summary(cfg, lit.monitor, best, trainer, time.time() - started, parameters)
    log.info("router: %s (validation accuracy %s)", model_dir, summary["best_score"])
    return model_dir
