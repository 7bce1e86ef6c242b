"""texlens: read a picture of a math formula and write its LaTeX."""

from __future__ import annotations

__version__ = "0.1.0"

# The default decoding: a 3-wide beam. It read better than greedy decoding on nearly every figure of every model
# bundled so far (docs/RESULTS.md, "Compile rate") and, on the tuning split, costs 1.4-1.8x greedy decoding's time
# per image (benchmarks/beam_on_doubt.py, which also found that re-reading only the images greedy decoding is
# unsure of saves little: most IM2LATEX readings hold a token below p = 0.5). beam=1 is greedy decoding.
# Here, not in texlens.predictor, so that the command line can show it without loading torch.
DEFAULT_BEAM = 3

__all__ = ["DEFAULT_BEAM", "Predictor", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import texlens` stays fast and torch loads only when needed.
    if name == "Predictor":
        from texlens.predictor import Predictor

        return Predictor
    raise AttributeError(name)
