"""Activation maximization (AM) and inter-unit AM (IAM), one image per unit, optimized in batches.

Lucid's split: ``objectives`` (what to maximize), ``param`` (how an image is parameterized),
``transforms`` (random robustness transforms), ``render`` (the optimization loop).
"""

from .objectives import METHODS
from .param import PARAMETERIZATIONS
from .render import OptimResult, OptimSettings, optimize_units, unit_seed

__all__ = ["METHODS", "PARAMETERIZATIONS", "OptimResult", "OptimSettings", "optimize_units", "unit_seed"]
