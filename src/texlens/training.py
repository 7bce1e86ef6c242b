"""Training with PyTorch Lightning: a config dataclass, the LightningModule, and ``train()``.

``texlens train --config configs/default.yaml [key=value ...] [--resume]`` reads a YAML file into
:class:`TrainConfig`, builds the vocabulary from the training sets, fits the same ``nn.Module`` the Predictor
runs, keeps the best checkpoint by validation edit similarity (plus ``last.ckpt`` every few minutes and steps,
so a killed run resumes where it was), and finally exports the best weights as a model directory
(``OUT/model``: safetensors + config.json + vocab.json) with loss/metric curves beside it (``OUT/curves.png``).
Lightning checkpoints are training state only; the model directory is what ships.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import time
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from texlens.data.dataset import Batch, BucketBatchSampler, FormulaDataset, collate
from texlens.latex import SPECIAL_TOKENS, Vocab
from texlens.metrics import MetricSet

__all__ = [
    "DatasetSpec",
    "FormulaDataModule",
    "LitImageToLatex",
    "TrainConfig",
    "load_config",
    "plot_curves",
    "read_metrics",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR, LAST_CKPT, BEST_CKPT = "checkpoints", "last.ckpt", "best.ckpt"
MODEL_DIR, VOCAB_FILE, CURVES_FILE, SUMMARY_FILE = "model", "vocab.json", "curves.png", "summary.json"


# ============================================================================ configuration


@dataclass
class DatasetSpec:
    """One dataset on disk (any layout ``read_dataset`` reads) with its share of each training epoch."""

    path: str
    weight: float = 1.0
    limit: int | None = None  # use only the first N samples (quick runs, tests)
    offset: int = 0  # skip the first N samples (with limit: carve a held-out part out of a training set)
    name: str | None = None  # shown in logs; default: the folder name
    augment: float | None = None  # training sets only: own augmentation strength; default ``cfg.augment``
    # Training sets only: "handwriting" adds per-symbol jitter and more elastic warps
    # (``texlens.data.augment.HANDWRITING``); "print" is the default set of perturbations.
    augment_kind: str = "print"
    # Handwriting (e.g. CROHME): read at ``preprocess.handwriting_glyph_height`` when that is set, and the
    # "handwritten" class when training the router (mode: router).
    handwritten: bool = False
    # Validation sets only: false logs the set's figures but leaves it out of the mean that picks best.ckpt and
    # stops early, e.g. a test set whose figures are reported and so must not choose the checkpoint (mode: mlm
    # pools its validation formulas into one set and leaves such sets out).
    select: bool = True


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files in configs/ fill it, ``key=value`` overrides adjust it."""

    # --- what to train
    # "supervised": image -> LaTeX; "mlm": masked-LM pre-training of the decoder on formulas alone
    mode: str = "supervised"
    model: str = "resnet-transformer"  # a name from texlens.models.MODELS
    preset: str = "default"  # a size from texlens.models.PRESETS
    model_options: dict[str, Any] = field(default_factory=dict)  # config fields of the model, e.g. d_model
    dropout: float | None = None  # overrides the preset's dropout
    init_from: str | None = None  # a model directory or a .ckpt to start from (e.g. an MLM pre-training)
    # --- data
    train: list[DatasetSpec] = field(default_factory=list)
    val: list[DatasetSpec] = field(default_factory=list)
    vocab_file: str | None = None  # extra tokens (vocab.json) kept even when the training sets lack them
    min_freq: int = 1
    max_tokens: int = 200  # longer labels are dropped
    batch_size: int = 32  # samples per batch at most
    batch_pixels: int | None = None  # padded pixels per batch at most (small images -> bigger batches)
    epoch_size: int | None = None  # samples per epoch drawn from the weighted mix; default: all of them
    augment: float = 0.0  # augmentation strength, 0 = off
    preprocess: dict[str, Any] = field(default_factory=dict)  # PreprocessConfig fields
    num_workers: int = 0
    val_samples: int = 200  # validation samples per dataset (greedy decoding is the slow part)
    # --- optimisation
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    schedule: str = "cosine"  # "cosine", "linear" (decay to min_lr_ratio * lr at max_steps) or "constant"
    min_lr_ratio: float = 0.05
    label_smoothing: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    # An optimizer step whose gradients hold NaN or inf is skipped (its weights and Adam state stay as they were),
    # as fp16 loss scaling does; this many such steps in a row stop the run as diverged.
    max_nonfinite_steps: int = 25
    # > 0: keep an exponential moving average of the weights (e.g. 0.999, about the last 1,000 steps), which
    # validation measures and export writes (supervised mode).
    ema_decay: float = 0.0
    teacher_forcing: str = "teacher"  # cnn-rnn: "teacher", "free" (own predictions) or "scheduled"
    teacher_forcing_floor: float = 0.5  # "scheduled": probability of the gold token falls from 1 to this
    teacher_forcing_steps: int | None = None  # ... over this many steps (default max_steps)
    mlm_prob: float = 0.15  # share of tokens corrupted in MLM pre-training
    mlm_mask: float = 0.8  # ... of which replaced by [MASK]
    mlm_random: float = 0.1  # ... replaced by a random token (the rest stay unchanged)
    # --- run
    max_steps: int = 10_000
    max_time_minutes: float | None = None
    val_every_n_steps: int = 500
    patience: int = 10  # validations without improvement before stopping
    precision: str = "auto"  # "auto" (bf16-mixed where the hardware has it), "32", "bf16-mixed", "16-mixed"
    channels_last: bool = True
    accelerator: str = "auto"
    devices: Any = "auto"  # e.g. 4 for four GPUs (DDP)
    strategy: str = "auto"  # e.g. "ddp"
    num_nodes: int = 1
    checkpoint_every_minutes: float = 5.0
    checkpoint_every_n_steps: int = 200
    # > 0: also keep the weights every N steps (checkpoints/step-NNNNNN.ckpt, no optimizer state), e.g. for
    # `texlens export model ... --average-with` over a run's last checkpoints.
    keep_every_n_steps: int = 0
    log_every_n_steps: int = 20
    progress_bar: bool = True
    output_dir: str = "runs/default"
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "mode": ("supervised", "mlm", "router"),
            "schedule": ("cosine", "linear", "constant"),
            "teacher_forcing": ("teacher", "free", "scheduled"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 (the learning-rate schedule is laid out over it)")
        if self.grad_accum < 1 or self.batch_size < 1 or self.val_every_n_steps < 1:
            raise ValueError("grad_accum, batch_size and val_every_n_steps must be >= 1")
        if self.max_nonfinite_steps < 1:
            raise ValueError(
                "max_nonfinite_steps must be >= 1 (non-finite steps in a row before the run stops)"
            )
        if self.keep_every_n_steps < 0:
            raise ValueError("keep_every_n_steps must be >= 0 (0 keeps only last.ckpt and best.ckpt)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay}: use 0 (off) or a decay below 1, e.g. 0.999")
        if self.ema_decay and self.mode != "supervised":
            raise ValueError(f"ema_decay is for supervised training; mode {self.mode} keeps plain weights")
        if self.val and not any(spec.select for spec in self.val):
            raise ValueError("every val set has select: false; at least one must choose the checkpoints")
        from texlens.data.augment import AUGMENT_KINDS

        if self.augment < 0:
            raise ValueError(f"augment must be >= 0 (0 is off), got {self.augment}")
        for spec in self.train:
            if spec.augment is not None and spec.augment < 0:
                raise ValueError(f"augment must be >= 0, got {spec.augment} for {spec.path}")
            if spec.augment_kind not in AUGMENT_KINDS:
                raise ValueError(
                    f"augment_kind must be one of {sorted(AUGMENT_KINDS)}, got {spec.augment_kind!r} for {spec.path}"
                )

    def selects(self, index: int) -> bool:
        """Whether validation set ``index`` counts in the mean that chooses checkpoints (``select``)."""
        return index >= len(self.val) or self.val[index].select


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config into :class:`TrainConfig`, then apply ``key=value`` overrides (dotted keys, YAML values).

    ``lr=3e-4``, ``model_options.d_model=128``, ``train.0.weight=2``,
    ``train=[{path: datasets/train_printed, weight: 1}]`` all work; unknown keys are errors.
    A config with ``extends: other.yaml`` (a path relative to its own folder) is that config with these keys
    changed: a mapping (``preprocess``, ``model_options``) is merged key by key, anything else (a list of sets
    too) replaces the parent's value.
    """
    raw = _read_config_file(Path(path)) if path is not None else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        _set_dotted(raw, key.strip().split("."), yaml.safe_load(value) if value.strip() else None)
    return _build(TrainConfig, raw, "config")


def _read_config_file(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a mapping, its ``extends:`` chain resolved (see ``load_config``)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such training config" + (f" (extended by {children[-1]})" if children else "")
        )
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: a training config is a YAML mapping of keys to values")
    raw = dict(loaded or {})
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{path}: extends takes one config file, got {parent!r}")
    chain = (*children, path.resolve())
    base_path = path.parent / parent
    if base_path.resolve() in chain:
        raise ValueError(f"{path}: extends {parent}, which extends it back: " + " -> ".join(map(str, chain)))
    return _merged(_read_config_file(base_path, chain), raw)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``: mappings merged key by key, every other value replaced."""
    out = dict(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node: Any = tree
    for k, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, keys[: k + 1])]
        else:
            node = node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys)] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, where: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ValueError(f"{'.'.join(where)}: {key!r} is not an index of a list of {len(node)} items")
    return int(key)


def _build(cls: type, values: Any, where: str) -> Any:
    """A dataclass from a mapping, every field converted to its annotated type; unknown keys raise."""
    if isinstance(values, cls):
        return values
    if cls is DatasetSpec and isinstance(values, str):
        values = {"path": values}
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, Optional, list[...], dict, dataclass)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(v, item_type, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or value is None:
            raise ValueError(f"{where}: expected a number, got {value!r}")
        number = float(value) if isinstance(value, str) else value  # "1e-3" is a string to YAML 1.1
        if tp is int:
            if float(number) != int(number):
                raise ValueError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return float(number)
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


# ============================================================================ data


def _read_spec(spec: DatasetSpec) -> list[Any]:
    """Samples of one dataset spec; problems in the files are counted in the log, not silently skipped."""
    from texlens.data.formats import format_issues, read_dataset

    samples, issues = read_dataset(spec.path)
    if issues:
        log.warning("%s: %d lines skipped\n%s", spec.path, len(issues), format_issues(issues))
    if spec.offset < 0 or (spec.limit is not None and spec.limit < 0):
        raise ValueError(f"dataset {spec.path}: offset and limit must be >= 0")
    samples = samples[spec.offset :]
    if spec.limit is not None:
        samples = samples[: spec.limit]
    if not samples:
        raise ValueError(
            f"dataset {spec.path} has no usable samples (offset {spec.offset}, limit {spec.limit})"
        )
    return samples


def _spec_name(spec: DatasetSpec) -> str:
    return spec.name or Path(spec.path).name or str(spec.path)


def build_vocab(cfg: TrainConfig, train_samples: Sequence[Sequence[Any]]) -> Vocab:
    """Vocabulary of the training labels (plus ``vocab_file``'s tokens), in a stable order."""
    vocab = Vocab.build((s.latex for samples in train_samples for s in samples), min_freq=cfg.min_freq)
    if cfg.vocab_file:
        extra = Vocab.load(cfg.vocab_file)
        vocab = Vocab([*vocab.itos[len(SPECIAL_TOKENS) :], *extra.itos[len(SPECIAL_TOKENS) :]])
    return vocab


def _preprocess_config(cfg: TrainConfig) -> Any:
    from texlens.image import PreprocessConfig

    return PreprocessConfig(**cfg.preprocess)


def preprocess_config_for(cfg: TrainConfig, spec: DatasetSpec) -> Any:
    """How a dataset's images are preprocessed: handwritten sets at the handwriting glyph height, if one is set."""
    config = _preprocess_config(cfg)
    return config.for_handwriting() if spec.handwritten else config


def write_preprocess(model_dir: str | Path, preprocess: dict[str, Any]) -> None:
    """Record the preprocessing a model was trained with in its config.json (``read_preprocess_config``)."""
    if not preprocess:
        return
    config_file = Path(model_dir) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["preprocess"] = dict(preprocess)
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


VAL_SUBSET_SEED = 0  # not the training seed: runs that differ only in their seed validate on the same images


def _val_subset(samples: list[Any], count: int) -> list[Any]:
    """A fixed random subset, the same at every validation, after resuming and whatever the training seed."""
    if len(samples) <= count:
        return samples
    keep = np.sort(np.random.default_rng(VAL_SUBSET_SEED).permutation(len(samples))[:count])
    return [samples[i] for i in keep]


def _augmenters(cfg: TrainConfig) -> list[Any]:
    """One augmentation per training set: sets of the same strength and kind share one (so one random
    stream), a set's own ``augment`` overrides the config's (e.g. stronger for the few handwritten formulas),
    0 is none."""
    from texlens.data.augment import AUGMENT_KINDS, build_augment

    shared: dict[tuple[float, str], Any] = {}
    out = []
    for spec in cfg.train:
        strength = float(cfg.augment if spec.augment is None else spec.augment)
        key = (strength, spec.augment_kind)
        if strength > 0 and key not in shared:
            # The config's strength (print) keeps the run's seed; each other one gets its own stream. Every
            # augmenter re-seeds itself in each DataLoader worker and DDP process.
            seed = cfg.seed if key == (cfg.augment, "print") else cfg.seed * 1009 + len(shared) + 1
            shared[key] = build_augment(strength, seed=seed, config=AUGMENT_KINDS[spec.augment_kind])
        out.append(shared.get(key))
    return out


class FormulaDataModule(pl.LightningDataModule):
    """Training mix (weighted, size-bucketed) and one validation loader per validation dataset."""

    collate_fn = staticmethod(collate)  # pad id 0 = Vocab.pad_id
    # Validation loads its images in the training process: a worker forked for it copied most of the process's
    # heap (Python touches every object it walks; 3.7 GB private memory at stage 18) and Lightning keeps the
    # last one alive between validations, while the few hundred images it reads cost seconds next to decoding.
    val_workers: int | None = 0  # None: cfg.num_workers

    def __init__(
        self, cfg: TrainConfig, vocab: Vocab, train_samples: list[list[Any]], val_samples: list[list[Any]]
    ):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        self.train_sets = [
            FormulaDataset(s, vocab, preprocess_config_for(cfg, spec), augment, cfg.max_tokens)
            for s, spec, augment in zip(train_samples, cfg.train, _augmenters(cfg), strict=True)
        ]
        self.val_sets = [
            FormulaDataset(s, vocab, preprocess_config_for(cfg, spec), None, cfg.max_tokens)
            for s, spec in zip(val_samples, cfg.val, strict=True)
        ]
        self.val_names = [_spec_name(s) for s in cfg.val]
        self._train_sizes: list[tuple[int, int]] | None = None

    def _loader(
        self, dataset: Any, sampler: BucketBatchSampler, persistent: bool, workers: int | None = None
    ) -> DataLoader:
        workers = self.cfg.num_workers if workers is None else workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=workers,
            persistent_workers=persistent and workers > 0,
        )

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        if self._train_sizes is None:
            self._train_sizes = [size for ds in self.train_sets for size in ds.sizes()]
        replicas, rank = self._replicas()
        sampler = BucketBatchSampler(
            self._train_sizes,
            self.cfg.batch_size,
            self.cfg.batch_pixels,
            lengths=[len(ds) for ds in self.train_sets],
            weights=[spec.weight for spec in self.cfg.train],
            epoch_size=self.cfg.epoch_size,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=True,
            num_replicas=replicas,
            rank=rank,
        )
        return self._loader(ConcatDataset(self.train_sets), sampler, True)

    def val_dataloader(self) -> list[DataLoader]:
        replicas, rank = self._replicas()
        loaders = []
        for ds in self.val_sets:
            sampler = BucketBatchSampler(
                ds.sizes(),
                self.cfg.batch_size,
                self.cfg.batch_pixels,
                shuffle=False,
                num_replicas=replicas,
                rank=rank,
            )
            loaders.append(self._loader(ds, sampler, False, self.val_workers))
        return loaders


# ============================================================================ the LightningModule


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine / linear decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def teacher_forcing_prob(step: int, cfg: TrainConfig) -> float:
    """Probability of feeding the gold token at ``step``: 1 (teacher), 0 (free running) or a linear decay."""
    if cfg.teacher_forcing == "teacher":
        return 1.0
    if cfg.teacher_forcing == "free":
        return 0.0
    horizon = cfg.teacher_forcing_steps or cfg.max_steps
    return 1.0 - (1.0 - cfg.teacher_forcing_floor) * min(1.0, step / max(1, horizon))


class _LitBase(pl.LightningModule):
    """What supervised training and MLM pre-training share: the model, the loss, AdamW and the LR schedule."""

    monitor, monitor_mode = "val/loss", "min"

    def __init__(self, model: nn.Module, vocab: Vocab, cfg: TrainConfig):
        super().__init__()
        self.model, self.vocab, self.cfg = model, vocab, cfg
        self.save_hyperparameters({"config": asdict(cfg)})
        self.skipped_steps = 0  # optimizer steps skipped for non-finite gradients, this process
        self._nonfinite_in_a_row = 0

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Skip a step whose gradients are not finite (stop after ``max_nonfinite_steps`` in a row), else clip.

        bf16 autocast on CPUs with AMX (and half precision on GPUs) now and then gives a NaN gradient on a batch
        whose loss is finite; one such step would turn every weight into NaN. Without gradients AdamW leaves
        the weights and its moments alone. Lightning calls this before every optimizer step, clipping or not, so
        the total norm is computed once for both the check and the clipping. Under DDP the gradients are already
        reduced, so ranks agree.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not bool(torch.isfinite(norm)):
            self._skip_nonfinite_step(params)
            return
        self._nonfinite_in_a_row = 0
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        else:  # "value": Lightning's own
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _skip_nonfinite_step(self, params: list[torch.Tensor]) -> None:
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        for p in params:
            p.grad = None
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self._nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            raise RuntimeError(
                f"the gradients were NaN or inf for {self._nonfinite_in_a_row} optimizer steps in a row (step "
                f"{self.global_step}): training has diverged. Lower lr, set grad_clip, or train in full precision "
                f"(precision: '32'); last.ckpt holds the last good weights"
            )

    @property
    def net(self) -> nn.Module:
        """The weights that validation measures and export writes."""
        return self.model

    def token_loss(
        self, logits: torch.Tensor, target: torch.Tensor, smoothing: float | None = None
    ) -> torch.Tensor:
        """Mean cross entropy over non-pad target positions."""
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=self.vocab.pad_id,
            label_smoothing=self.cfg.label_smoothing if smoothing is None else smoothing,
        )

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # Biases, norms and embeddings are not shrunk towards zero (as in nanoGPT / BERT).
            (decay if p.ndim >= 2 and "embed" not in name and "null_memory" not in name else no_decay).append(
                p
            )
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.cfg.lr,
            betas=(0.9, 0.98),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.cfg))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from texlens.models import model_config

        # Enough to rebuild the model from the checkpoint alone (init_from=some.ckpt), and to export it with the
        # preprocessing it was trained with (texlens export model).
        checkpoint["texlens"] = {
            "model_config": model_config(self.model),
            "vocab": list(self.vocab.itos),
            "preprocess": dict(self.cfg.preprocess),
        }


class LitImageToLatex(_LitBase):
    """Image -> LaTeX training: cross entropy on the next token, greedy-decoded metrics on validation."""

    monitor, monitor_mode = "val/edit_similarity", "max"

    def __init__(self, model: nn.Module, vocab: Vocab, cfg: TrainConfig, val_names: Sequence[str] = ()):
        super().__init__(model, vocab, cfg)
        self.val_names = list(val_names)
        self._takes_teacher_forcing = "teacher_forcing" in inspect.signature(model.forward).parameters
        if cfg.teacher_forcing != "teacher" and not self._takes_teacher_forcing:
            raise ValueError(
                f"teacher_forcing={cfg.teacher_forcing!r} needs a recurrent model (cnn-rnn), not {cfg.model}"
            )
        self._val: dict[int, dict[str, Any]] = {}
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # BatchNorm statistics are averaged too (use_buffers), so the average is usable as it stands.
            self.ema = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
            ).requires_grad_(False)
            self._ema_step = -1

    @property
    def net(self) -> nn.Module:
        """The weights that validation measures and export writes: the moving average, if kept."""
        return self.ema.module if self.cfg.ema_decay else self.model

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.cfg.ema_decay and self.global_step != self._ema_step:  # once per optimizer step
            self.ema.update_parameters(self.model)
            self._ema_step = self.global_step

    def _images(self, batch: Batch) -> torch.Tensor:
        if self.cfg.channels_last:
            return batch.images.contiguous(memory_format=torch.channels_last)
        return batch.images

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self._takes_teacher_forcing:
            p = teacher_forcing_prob(self.global_step, self.cfg)
            logits = self.model(self._images(batch), batch.tgt_in, teacher_forcing=p)
            self.log("train/teacher_forcing", p)
        else:
            logits = self.model(self._images(batch), batch.tgt_in)
        loss = self.token_loss(logits, batch.tgt_out)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.images.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        from texlens.decoding import greedy_decode

        state = self._val.setdefault(dataloader_idx, {"metrics": MetricSet(), "loss": 0.0, "tokens": 0})
        images = self._images(batch)
        logits = self.net(images, batch.tgt_in)
        n_tokens = int((batch.tgt_out != self.vocab.pad_id).sum())
        state["loss"] += float(self.token_loss(logits, batch.tgt_out, smoothing=0.0)) * n_tokens
        state["tokens"] += n_tokens
        # Predictions much longer than the reference are wrong anyway; capping them keeps validation fast.
        max_len = min(self.cfg.max_tokens, 2 * batch.tgt_out.shape[1] + 10)
        # Plain greedy search (no syntax constraints): validation measures the network itself.
        hyps = greedy_decode(self.net, images, max_len=max_len, constraints=False, return_attention=False)
        preds = [self.vocab.decode(h.ids) for h in hyps]
        refs = [self.vocab.decode(row) for row in batch.tgt_out.tolist()]
        state["metrics"].update(preds, refs)
        if batch_idx == 0 and self.trainer.is_global_zero:
            state["example"] = (" ".join(refs[0]), " ".join(preds[0]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        totals: dict[str, list[float]] = {}
        for idx, state in sorted(self._val.items()):
            name = self.val_names[idx] if idx < len(self.val_names) else f"set{idx}"
            results = state["metrics"].compute()
            results["loss"] = state["loss"] / max(state["tokens"], 1)
            for key in ("loss", "edit_similarity", "exact_match", "bleu4", "exprate_1"):
                self.log(f"val/{name}/{key}", results[key], sync_dist=True, add_dataloader_idx=False)
                if self.cfg.selects(idx):
                    totals.setdefault(key, []).append(results[key])
            if "example" in state:
                ref, pred = state["example"]
                log.info("step %d %s\n  ref:  %s\n  pred: %s", self.global_step, name, ref, pred)
        for key, values in totals.items():  # the unweighted mean over the selecting sets drives checkpoints
            self.log(
                f"val/{key}",
                sum(values) / len(values),
                sync_dist=True,
                add_dataloader_idx=False,
                prog_bar=key == "edit_similarity",
            )


# ============================================================================ callbacks and helpers


class LastCheckpoint(Callback):
    """Write ``last.ckpt`` every N optimizer steps and every M minutes, so a killed run loses little; with
    ``keep_every_n_steps``, also keep the weights of every K-th step beside it (``step-NNNNNN.ckpt``)."""

    def __init__(self, path: Path, every_n_steps: int, every_minutes: float, keep_every_n_steps: int = 0):
        self.path, self.every_n_steps, self.every_seconds = Path(path), every_n_steps, every_minutes * 60
        self.keep_every_n_steps = keep_every_n_steps
        self._last_time = time.monotonic()
        self._handled_step = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self._handled_step:
            return  # once per optimizer step (gradient accumulation repeats global_step)
        self._handled_step = step
        due_time = trainer.strategy.broadcast(time.monotonic() - self._last_time >= self.every_seconds)
        if (self.every_n_steps and step % self.every_n_steps == 0) or due_time:
            self.save(trainer)
        if self.keep_every_n_steps and step % self.keep_every_n_steps == 0:
            trainer.save_checkpoint(self.path.with_name(f"step-{step:06d}.ckpt"), weights_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):  # Ctrl-C: keep everything up to now
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Save now (Lightning writes the file atomically), with optimizer and callback state for ``--resume``."""
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_time = time.monotonic()


class _EpochForSampler(Callback):
    """Tell the bucket sampler which epoch it is, so a resumed run continues with the right shuffling."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(trainer.current_epoch)


def _cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX); on plain AVX2 bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(cfg: TrainConfig) -> str:
    """``auto``: bf16 autocast on GPUs and CPUs that compute bf16 natively, else 32 bit."""
    if cfg.precision != "auto":
        return cfg.precision
    if cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if cfg.accelerator in ("auto", "cpu") and _cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32"


def _load_checkpoint(path: Path) -> dict[str, Any]:
    # Our own checkpoint: it holds plain Python state of callbacks besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


EMA_PREFIX = "ema.module."  # LitImageToLatex.ema, an AveragedModel around a copy of the model


def load_initial(path: str | Path) -> tuple[nn.Module, Vocab]:
    """Model and vocabulary to start from: a model directory (``save_model``) or a training ``.ckpt``."""
    from texlens.models import build_model, load_model

    path = Path(path)
    if path.is_dir():
        model, vocab = load_model(path)
        return model.train(), vocab
    ckpt = _load_checkpoint(path)
    if "texlens" not in ckpt:
        raise ValueError(f"{path} is not a texlens training checkpoint (no model config inside)")
    info = ckpt["texlens"]
    vocab = Vocab(info["vocab"][len(SPECIAL_TOKENS) :])
    model = build_model(**info["model_config"])
    model.load_state_dict(model_weights(ckpt["state_dict"]))
    return model, vocab


def trained_preprocess(path: str | Path) -> dict[str, Any]:
    """The preprocessing settings a model directory or training ``.ckpt`` was trained with ({} = defaults)."""
    path = Path(path)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return dict(config.get("preprocess") or {})
    return dict(_load_checkpoint(path).get("texlens", {}).get("preprocess") or {})


def model_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model's weights in a training checkpoint's state dict: the moving average if the run kept one."""
    prefix = EMA_PREFIX if any(k.startswith(EMA_PREFIX) for k in state) else "model."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _build_model(cfg: TrainConfig, vocab: Vocab, initial: nn.Module | None) -> nn.Module:
    from texlens.models import build_model, model_config, rebuild

    overrides = dict(cfg.model_options)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    if initial is None:
        return build_model(cfg.model, len(vocab), cfg.preset, **overrides)
    # Start from the given weights: the architecture comes from them; model_options may change only what
    # keeps every weight's shape (dropout, the encoder's atrous stages) or grow the model deeper (models.rebuild).
    name = model_config(initial)["name"]
    if name != cfg.model:
        raise ValueError(f"init_from holds a {name} model but the config trains {cfg.model}")
    return rebuild(initial, **overrides)


def read_metrics(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """Every logged series of a run, ``{name: {step: value}}``, from Lightning's CSV logs (all versions)."""
    import csv

    series: dict[str, dict[int, float]] = {}
    for csv_file in sorted(Path(log_dir).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(csv_file, newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row.get("step") or 0))
                for key, value in row.items():
                    if key in ("step", "epoch") or value in ("", None):
                        continue
                    series.setdefault(key, {})[step] = float(value)  # a resumed run overwrites its past
    return series


def plot_curves(log_dir: str | Path, out_png: str | Path) -> Path | None:
    """Plot losses, validation metrics and the learning rate from Lightning's CSV logs (all versions) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(log_dir)
    if not series:
        return None
    panels = [
        ("loss", [k for k in series if k.endswith("loss")]),
        ("validation", [k for k in series if k.startswith("val/") and not k.endswith("loss")]),
        ("learning rate", [k for k in series if k.startswith("lr")]),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in sorted(keys):
            steps = sorted(series[key])
            ax.plot(
                steps, [series[key][s] for s in steps], label=key, marker="." if len(steps) < 30 else None
            )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


# ============================================================================ train()


def prepare_output(cfg: TrainConfig, resume: bool) -> tuple[Path, Path]:
    """Check the run's folder (a new run must not overwrite one, ``--resume`` needs one); (OUT, last.ckpt)."""
    out = Path(cfg.output_dir)
    resume_from = out / CHECKPOINT_DIR / LAST_CKPT
    if resume and not resume_from.is_file():
        raise FileNotFoundError(f"--resume: {resume_from} does not exist; start the run without --resume")
    if not resume and resume_from.is_file():
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another output_dir"
        )
    if not cfg.train or not cfg.val:
        raise ValueError("the config needs at least one training and one validation dataset (train:, val:)")
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return out, resume_from


def build_trainer(
    cfg: TrainConfig, lit: pl.LightningModule, resume_from: Path, distributed_sampler: bool = False
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Trainer every mode uses: best and last checkpoints, early stopping, LR log, CSV log; (trainer, best)."""
    out = Path(cfg.output_dir)
    best = ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR,
        filename=Path(BEST_CKPT).stem,
        monitor=lit.monitor,
        mode=lit.monitor_mode,
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [
        best,
        LastCheckpoint(
            resume_from, cfg.checkpoint_every_n_steps, cfg.checkpoint_every_minutes, cfg.keep_every_n_steps
        ),
        EarlyStopping(
            monitor=lit.monitor, mode=lit.monitor_mode, patience=cfg.patience, check_on_train_epoch_end=False
        ),
        LearningRateMonitor(logging_interval="step"),
        _EpochForSampler(),
    ]
    if cfg.progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    trainer = pl.Trainer(
        default_root_dir=out,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=resolve_precision(cfg),
        max_steps=cfg.max_steps,
        max_time=timedelta(minutes=cfg.max_time_minutes) if cfg.max_time_minutes else None,
        # Validation every N optimizer steps, counted across epochs.
        val_check_interval=cfg.val_every_n_steps * cfg.grad_accum,
        check_val_every_n_epoch=None,
        accumulate_grad_batches=cfg.grad_accum,
        gradient_clip_val=cfg.grad_clip,
        callbacks=callbacks,
        logger=CSVLogger(out, name="logs"),
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.progress_bar,
        num_sanity_val_steps=0,
        # The bucket sampler shards batches across ranks itself; plain loaders (MLM text) get Lightning's.
        use_distributed_sampler=distributed_sampler,
    )
    if resume_from.is_file():
        # A resumed epoch restarts its (seeded) batch order; repeating part of one epoch is harmless.
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    return trainer, best


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run training as ``cfg`` says; returns the exported model directory ``OUT/model``."""
    if cfg.mode == "router":
        from texlens.router import train_router

        return train_router(cfg, resume)
    out, resume_from = prepare_output(cfg, resume)
    train_samples = [_read_spec(spec) for spec in cfg.train]
    val_samples = [_val_subset(_read_spec(spec), cfg.val_samples) for spec in cfg.val]
    initial = None
    if resume:
        vocab = Vocab.load(out / VOCAB_FILE)  # the run's own vocabulary: ids must not move
        # ... and its own architecture: a model that init_from made (an a trous or grown copy of another) is not
        # the preset's, and Lightning would load the same weights into a different network without a word.
        initial, _ = load_initial(resume_from)
    elif cfg.init_from:
        initial, vocab = load_initial(cfg.init_from)
    else:
        vocab = build_vocab(cfg, train_samples)
    vocab.save(out / VOCAB_FILE)
    _report_unknown(vocab, train_samples)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False), encoding="utf-8")

    model = _build_model(cfg, vocab, initial)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.mode == "mlm":
        from texlens.mlm import LitMaskedLM, TextDataModule

        lit: _LitBase = LitMaskedLM(model, vocab, cfg)
        datamodule: pl.LightningDataModule = TextDataModule(cfg, vocab, train_samples, val_samples)
    else:
        datamodule = FormulaDataModule(cfg, vocab, train_samples, val_samples)
        lit = LitImageToLatex(model, vocab, cfg, datamodule.val_names)

    trainer, best = build_trainer(cfg, lit, resume_from, distributed_sampler=cfg.mode == "mlm")
    started = time.time()
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from if resume else None)
    if not trainer.is_global_zero:
        return out / MODEL_DIR
    return _finish(cfg, lit, vocab, best, trainer, time.time() - started)


def _report_unknown(vocab: Vocab, train_samples: Sequence[Sequence[Any]]) -> None:
    unknown: dict[str, int] = {}
    for samples in train_samples:
        for s in samples:
            for tok in vocab.unknown(s.latex.split()):
                unknown[tok] = unknown.get(tok, 0) + 1
    if unknown:
        top = sorted(unknown.items(), key=lambda kv: -kv[1])[:10]
        log.warning(
            "%d training tokens are not in the vocabulary (-> <unk>), most often: %s",
            sum(unknown.values()),
            top,
        )


def _finish(
    cfg: TrainConfig, lit: _LitBase, vocab: Vocab, best: ModelCheckpoint, trainer: pl.Trainer, seconds: float
) -> Path:
    """Export the best weights as a model directory, plot the curves, write a summary."""
    from texlens.models import count_parameters, save_model

    out = Path(cfg.output_dir)
    model = lit.net
    best_path = Path(best.best_model_path) if best.best_model_path else None
    if best_path is not None and best_path.is_file():
        model.load_state_dict(model_weights(_load_checkpoint(best_path)["state_dict"]))
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    model_dir = save_model(model, vocab, out / MODEL_DIR)
    write_preprocess(model_dir, cfg.preprocess)  # the Predictor must preprocess as training did
    write_summary(cfg, lit.monitor, best, trainer, seconds, count_parameters(model), model=cfg.model)
    return model_dir


def write_summary(
    cfg: TrainConfig,
    monitor: str,
    best: ModelCheckpoint,
    trainer: pl.Trainer,
    seconds: float,
    parameters: int,
    **extra: Any,
) -> dict[str, Any]:
    """Plot the curves and write ``OUT/summary.json`` at the end of a run (any mode); returns the summary."""
    out = Path(cfg.output_dir)
    curves = plot_curves(out / "logs", out / CURVES_FILE)
    best_path = Path(best.best_model_path) if best.best_model_path else None
    summary = {
        "mode": cfg.mode,
        **extra,
        "parameters": parameters,
        "global_step": trainer.global_step,
        "seconds_this_session": round(seconds, 1),
        "monitor": monitor,
        "best_score": float(best.best_model_score) if best.best_model_score is not None else None,
        "best_checkpoint": str(best_path) if best_path else None,
        "train": [asdict(s) for s in cfg.train],
        "val": [asdict(s) for s in cfg.val],
        "curves": str(curves) if curves else None,
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
