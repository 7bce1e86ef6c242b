"""texlens: read a picture of a math formula and write its LaTeX."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import texlens` stays fast and torch loads only when needed.
    if name == "Predictor":
        from texlens.predictor import Predictor

        return Predictor
    raise AttributeError(name)
