"""Activation maximization (AM) and inter-unit AM (IAM), one image per unit, optimized in batches.

Lucid's split: ``objectives`` (what to maximize), ``param`` (how an image is parameterized),
``transforms`` (random robustness transforms), ``render`` (the optimization loop), plus
``progress`` (one bar across layers).
"""

from repsub.optimize.objectives import METHODS, OWN_TERMS
from repsub.optimize.param import PARAMETERIZATIONS
from repsub.optimize.progress import UnitProgress
from repsub.optimize.render import OptimResult, OptimSettings, optimize_units, unit_seed

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
