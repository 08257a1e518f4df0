"""Checks of numeric inputs shared by the commands, the Python API and the sweep config: each bad value a
UsageError that names the option (or config key) and the value, before anything is loaded or written."""

from __future__ import annotations

import math

from repsub.errors import UsageError

SEED_LIMIT = 2**63  # seeds are int64 in the units table, and torch's generators take no more


def check_int(value, option: str, minimum: int) -> int:
    """An integer (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{option} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}")
    return value


def check_seed(seed, option: str = "--seed") -> int:
    check_int(seed, option, 0)
    if seed >= SEED_LIMIT:
        raise UsageError(f"{option} must be below 2**63, got {seed}")
    return seed


def check_number(value, option: str, minimum: float = 0.0, positive: bool = False) -> float:
    """A finite number of at least `minimum` (above it when `positive`)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value!r}")
    if value < minimum or (positive and value <= minimum):
        raise UsageError(f"{option} must be {'above' if positive else 'at least'} {minimum}, got {value}")
    return float(value)
