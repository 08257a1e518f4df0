"""Distributed sweeps on Ray: a YAML config planned into deterministic shards, run by long-lived actors,
committed shard by shard (resumable), merged, and summarized.

config      the sweep's YAML, validated          plan        deterministic data, unit and importance shards
driver      plan, skip what is done, run, merge  ray_runner  Ray: connect, start actors, feed shards
work        what one actor does with a shard     commit      the shard-commit protocol (files, markers)
resources   what the cluster offers              command     `repsub sweep` / jobs/sweep.py options
"""

import importlib as _importlib

# Resolved on first use: `repsub sweep --help` (command) must not import the driver's torch and Ray.
_EXPORTS = {
    "SweepConfig": "config",
    "load_config": "config",
    "parse_config": "config",
    "SweepError": "driver",
    "run_sweep": "driver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
