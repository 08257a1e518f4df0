"""The analysis's options and their defaults (thresholds, bootstrap): light, so that the command line's help
imports nothing heavy (repsub.cli)."""

from __future__ import annotations

from dataclasses import dataclass

from repsub.errors import UsageError

HIGH_SELECTIVITY = 0.6  # "high-selectivity unit": selectivity >= this (post-ReLU selectivity is in [0, 1])
LOW_SELECTIVITY = 0.2  # "low-selectivity unit": selectivity <= this
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95  # of the bootstrap interval
DEFAULT_SEED = 0


@dataclass(frozen=True)
class StatsOptions:
    """Thresholds and bootstrap settings. `resamples=0` computes no interval (the summary's choice)."""

    high: float = HIGH_SELECTIVITY
    low: float = LOW_SELECTIVITY
    seed: int = DEFAULT_SEED
    resamples: int = BOOTSTRAP_RESAMPLES
    confidence: float = CONFIDENCE

    def validate(self) -> None:
        if not self.low <= self.high:
            raise UsageError(f"--low ({self.low}) must not exceed --high ({self.high})")
        if self.resamples < 0:
            raise UsageError(f"--resamples must be 0 (no interval) or more, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise UsageError(f"confidence must be in (0, 1), got {self.confidence}")
