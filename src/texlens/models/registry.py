"""Models by name, with their presets; saving and loading as safetensors + JSON (no pickle anywhere)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
from torch import nn

from texlens.models.cnn_rnn import CnnRnn, CnnRnnConfig
from texlens.models.encoder import ImageToLatex
from texlens.models.resnet_transformer import ResNetTransformer, ResNetTransformerConfig

if TYPE_CHECKING:
    from texlens.latex import Vocab

# name -> (model class, config class)
MODELS: dict[str, tuple[type[ImageToLatex], type]] = {
    "resnet-transformer": (ResNetTransformer, ResNetTransformerConfig),
    "cnn-rnn": (CnnRnn, CnnRnnConfig),
}

_TINY_ENCODER = {"widths": (8, 16, 16, 32), "blocks": (1, 1, 1, 1)}

# Overrides of each config's defaults; "default" is the shipped size (~6-7 M parameters), "tiny" is for tests.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "resnet-transformer": {
        # Encoder sized for CPU training: the 256-wide last stage cost 2x the step time for little gain.
        "default": {"encoder": {"widths": (24, 48, 96, 192), "blocks": (1, 1, 2, 1)}},
        "small": {
            "d_model": 192,
            "n_layers": 2,
            "n_heads": 6,
            "d_ff": 768,
            "encoder": {"widths": (32, 48, 96, 192)},
        },
        "tiny": {
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "d_ff": 64,
            "dropout": 0.0,
            "encoder": _TINY_ENCODER,
        },
    },
    "cnn-rnn": {
        "default": {"encoder": {"widths": (24, 48, 96, 192), "blocks": (1, 1, 2, 1)}},
        "small": {
            "d_model": 192,
            "hidden": 384,
            "attention_dim": 192,
            "encoder": {"widths": (32, 48, 96, 192)},
        },
        "tiny": {
            "d_model": 32,
            "embed_dim": 16,
            "hidden": 48,
            "attention_dim": 24,
            "out_dim": 32,
            "dropout": 0.0,
            "encoder": _TINY_ENCODER,
        },
    },
}

WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE = "model.safetensors", "config.json", "vocab.json"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``, merging nested dicts (the encoder's config) key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_model(name: str, vocab_size: int, preset: str = "default", **overrides: Any) -> ImageToLatex:
    """Build model ``name`` for ``vocab_size`` tokens from a preset, with config fields overridden."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if preset not in PRESETS[name]:
        raise ValueError(f"unknown preset {preset!r} for {name}; choose one of {sorted(PRESETS[name])}")
    model_cls, config_cls = MODELS[name]
    params = _merge(PRESETS[name][preset], overrides)
    try:
        config = config_cls(vocab_size=vocab_size, **params)
    except TypeError as exc:
        raise ValueError(f"bad configuration for {name}: {exc}") from exc
    return model_cls(config)


def model_config(model: nn.Module) -> dict[str, Any]:
    """JSON-serialisable config of ``model``: ``build_model(**model_config(model))`` rebuilds it."""
    config = asdict(model.config)
    return json.loads(json.dumps({"name": model.name, **config}))  # tuples -> lists, checks it serialises


def rebuild(model: nn.Module, **overrides: Any) -> ImageToLatex:
    """A model of ``model``'s architecture with config fields overridden, holding ``model``'s weights.

    For what changes no weight's shape: dropout, or the encoder's ``atrous`` stages (a finer feature map
    from a coarser model's weights). The model may also grow deeper, computing at first exactly what it
    computed before: more encoder ``blocks`` in a stage (appended after the stage's own, their last
    BatchNorm's scale zero, so each adds nothing to its identity shortcut) or more decoder ``n_layers``
    (appended on top, their output projections zero, so each adds nothing to its pre-norm residual stream).
    Training then moves the new layers off zero, as with the zero-initialised residuals of Goyal et al. (2017).
    An override that would need other weights is refused, naming them.
    """
    config = _merge(model_config(model), overrides)
    name = config.pop("name")
    new = build_model(name, **config)
    grown = _grown_modules(model, new)
    try:
        # strict but for the grown modules: names every other missing, unexpected or resized weight
        result = new.load_state_dict(model.state_dict(), strict=False)
        fresh = tuple(prefix + "." for prefix in grown)
        bad = [k for k in result.missing_keys if not k.startswith(fresh)] + list(result.unexpected_keys)
        if bad:
            raise RuntimeError(f"weights that do not carry over: {sorted(bad)}")
    except RuntimeError as exc:
        raise ValueError(
            f"{overrides} changes the model's weights; train that model from scratch. {exc}"
        ) from exc
    for prefix in grown:
        _zero_residual(new.get_submodule(prefix))
    return new


def _grown_modules(old: nn.Module, new: nn.Module) -> list[str]:
    """Names of the encoder blocks and decoder layers ``new`` has beyond ``old``'s (each stage, on top)."""
    grown: list[str] = []
    old_blocks = [len(stage) for stage in old.encoder.stages]
    new_blocks = [len(stage) for stage in new.encoder.stages]
    if len(old_blocks) == len(new_blocks):
        for s, (n_old, n_new) in enumerate(zip(old_blocks, new_blocks, strict=True)):
            grown += [f"encoder.stages.{s}.{b}" for b in range(n_old, n_new)]
    old_layers, new_layers = getattr(old, "layers", None), getattr(new, "layers", None)
    if old_layers is not None and new_layers is not None:
        grown += [f"layers.{i}" for i in range(len(old_layers), len(new_layers))]
    return grown


def _zero_residual(module: nn.Module) -> None:
    """Make a residual block or pre-norm decoder layer add nothing: zero what its branches end in."""
    if hasattr(module, "bn2"):  # encoder BasicBlock: relu(bn2(...) + x) = x for the non-negative x it gets
        nn.init.zeros_(module.bn2.weight)
        nn.init.zeros_(module.bn2.bias)
        return
    for linear in (module.self_attn.out, module.cross_attn.out, module.ff[-1]):
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def average_weights(models: Sequence[nn.Module]) -> nn.Module:
    """The first of ``models`` with each floating-point weight and buffer replaced by its mean over all of them.

    Averaging points of one training run (its last checkpoints, or the ends of runs that continue each other)
    lands nearer the middle of the minimum they circle, which usually generalises better than any one of them
    (stochastic weight averaging). BatchNorm's running statistics are averaged too; integer buffers (its
    batch counters) are the first model's. The models must have one architecture (dropout may differ).
    """
    if not models:
        raise ValueError("nothing to average")
    first = models[0]
    shape = {k: v for k, v in model_config(first).items() if k != "dropout"}
    for other in models[1:]:
        config = {k: v for k, v in model_config(other).items() if k != "dropout"}
        if config != shape:
            diff = sorted(k for k in shape.keys() | config.keys() if shape.get(k) != config.get(k))
            raise ValueError(f"cannot average models of different architectures (they differ in {diff})")
    states = [m.state_dict() for m in models]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            total = sum(state[key].float() for state in states)
            averaged[key] = (total / len(states)).to(value.dtype)
        else:
            averaged[key] = value
    first.load_state_dict(averaged)
    return first


def save_model(model: nn.Module, vocab: Vocab, directory: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``vocab.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) drops the duplicate of tied weights and restores them on load.
    safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(model_config(model), indent=2) + "\n", encoding="utf-8")
    vocab.save(directory / VOCAB_FILE)
    # safetensors creates its file owner-only (0600): give it the mode of the config, an ordinary new file, so
    # a model that is shared or installed system-wide can be read by the other users who can read the config.
    os.chmod(directory / WEIGHTS_FILE, (directory / CONFIG_FILE).stat().st_mode & 0o777)
    return directory


def load_model(directory: str | Path, map_location: str = "cpu") -> tuple[ImageToLatex, Vocab]:
    """Read a model directory written by :func:`save_model`; the model is returned in eval mode."""
    from texlens.latex import Vocab

    directory = Path(directory)
    for file in (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory / file} is missing; a model directory needs {file}")
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    # config.json also carries settings for the Predictor (e.g. "preprocess"); the model takes the rest.
    config.pop("preprocess", None)
    model = build_model(**config)
    safetensors.torch.load_model(model, directory / WEIGHTS_FILE, device=map_location)
    model.to(map_location).eval()
    vocab = Vocab.load(directory / VOCAB_FILE)
    if len(vocab) != model.config.vocab_size:
        raise ValueError(
            f"vocab.json has {len(vocab)} tokens but the model was built for {model.config.vocab_size}"
        )
    return model, vocab
