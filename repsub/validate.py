"""Checks of numeric inputs shared by the commands, the Python API and the sweep config: each bad value a
UsageError that names the option (or config key) and the value, before anything is loaded or written."""

from __future__ import annotations

import math

from .errors import UsageError

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


def check_image_size(model, size, option: str = "--image-size") -> int:
    """An image size the model takes: at least 1 px, what the model allows (fixed size, minimum), and one its
    forward runs at (a meta-device probe: a network whose pooling shrinks the map to nothing is refused)."""
    check_int(size, option, 1)
    try:
        model.check_image_size(size)
        if size != model.image_size:
            _probe(model, size)
    except UsageError as err:
        raise UsageError(f"{option} {size}: {err}") from None
    return size


def _probe(model, size: int) -> None:
    from .models.probe import probe_forward

    probe_forward(model.module, size, label=model.name)
