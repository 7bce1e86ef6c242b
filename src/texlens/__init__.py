"""texlens: read a picture of a math formula and write its LaTeX."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# The default decoding: a 3-wide beam. It read better than greedy decoding on nearly every figure of every model
# bundled so far (docs/RESULTS.md, "Compile rate") and, on the tuning split, costs 1.4-1.8x greedy decoding's time
# per image (benchmarks/beam_on_doubt.py, which also found that re-reading only the images greedy decoding is
# unsure of saves little: most IM2LATEX readings hold a token below p = 0.5). beam=1 is greedy decoding.
# Here, not in texlens.predictor, so that the command line can show it without loading torch.
DEFAULT_BEAM = 3

# PyTorch's CPU kernels (oneDNN) keep one compiled primitive per distinct shape, each with its own buffers, up to
# 1024 of them. Formula images come in every size and decoding meets every prefix length, so a training run or a
# server meets new shapes for hours and grew by gigabytes (a training process reached 18.5 GB and was killed).
# 256 still holds a training step's primitives: fixed-shape training steps run as fast as with 1024, and 64 cost
# 20 % (benchmarks/memory.py; docs/RESULTS.md, "Training memory"). oneDNN reads it once, at its first primitive,
# so it is set on import; the variable set beforehand wins.
ONEDNN_CACHE = 256
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))

__all__ = ["DEFAULT_BEAM", "ONEDNN_CACHE", "Predictor", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import texlens` stays fast and torch loads only when needed.
    if name == "Predictor":
        from texlens.predictor import Predictor

        return Predictor
    raise AttributeError(name)
