"""Activation maximization (AM) and inter-unit AM (IAM), one image per unit, optimized in batches.

Lucid's split: ``objectives`` (what to maximize), ``param`` (how an image is parameterized),
``transforms`` (random robustness transforms), ``render`` (the optimization loop), plus
``progress`` (one bar across layers).
"""

from .objectives import METHODS, OWN_TERMS
from .param import PARAMETERIZATIONS
from .progress import UnitProgress
from .render import OptimResult, OptimSettings, optimize_units, unit_seed

__all__ = [
    "METHODS",
    "OWN_TERMS",
    "PARAMETERIZATIONS",
    "OptimResult",
    "OptimSettings",
    "UnitProgress",
    "optimize_units",
    "unit_seed",
]
