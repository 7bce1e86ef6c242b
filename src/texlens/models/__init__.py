"""Image-to-LaTeX models: a ResNet encoder with a Transformer decoder, or a CNN with an attentive GRU."""

from texlens.models.cnn_rnn import CnnRnn, CnnRnnConfig
from texlens.models.encoder import Encoder, EncoderConfig, ImageToLatex
from texlens.models.registry import (
    MODELS,
    PRESETS,
    average_weights,
    build_model,
    count_parameters,
    load_model,
    model_config,
    rebuild,
    save_model,
)
from texlens.models.resnet_transformer import ResNetTransformer, ResNetTransformerConfig

__all__ = [
    "MODELS",
    "PRESETS",
    "CnnRnn",
    "CnnRnnConfig",
    "Encoder",
    "EncoderConfig",
    "ImageToLatex",
    "ResNetTransformer",
    "ResNetTransformerConfig",
    "average_weights",
    "build_model",
    "count_parameters",
    "load_model",
    "model_config",
    "rebuild",
    "save_model",
]
