"""Activation maximization (AM) and inter-unit AM (IAM), one image per unit, optimized in batches.

Lucid's split: ``objectives`` (what to maximize), ``param`` (how an image is parameterized),
``transforms`` (random robustness transforms), ``render`` (the optimization loop), plus
``progress`` (one bar across layers) and ``settings`` (the settings, declared once; light).
"""

from repsub.lazy import lazy_exports

# Names resolved on first use, so that importing the light `settings` module (the command line does) does not
# import torch.
_EXPORTS = {
    "METHODS": "objectives",
    "OWN_TERMS": "settings",
    "PARAMETERIZATIONS": "param",
    "UnitProgress": "progress",
    "OptimResult": "render",
    "OptimSettings": "settings",
    "optimize_units": "render",
    "unit_seed": "render",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
