"""The benchmarks' machine is shared: wait for a quiet moment before a measured round, say the load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float | None, patience: float = 1800) -> float:
    """Wait (at most `patience` seconds) until the 1-minute load average is below `max_load` (None: no wait).
    Returns the load average the measurement starts at."""
    waited = 0.0
    while max_load is not None and load_average() >= max_load and waited < patience:
        time.sleep(15)
        waited += 15
    return load_average()


def best_of_interleaved(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds of each side's call, the best of `repeats` rounds, the sides interleaved within a round so that
    each sees the same machine load (warm them up before)."""
    timings = dict.fromkeys(sides, float("inf"))
    for _ in range(repeats):
        for side, run in sides.items():
            started = time.perf_counter()
            run()
            timings[side] = min(timings[side], time.perf_counter() - started)
    return timings
