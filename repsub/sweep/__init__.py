"""Distributed sweeps on Ray: a YAML config planned into deterministic shards, run by long-lived actors,
committed shard by shard (resumable), merged, and summarized.

config      the sweep's YAML, validated          plan        deterministic fit, data, unit and importance shards
driver      plan, skip what is done, run, merge  ray_runner  Ray: connect, start actors, feed shards
work        what one actor does with a shard     commit      the shard-commit protocol (files, markers)
resources   what the cluster offers              command     `repsub sweep` / jobs/sweep.py options
"""

from repsub.lazy import lazy_exports

# Resolved on first use: `repsub sweep --help` (command) must not import the driver's torch and Ray.
_EXPORTS = {
    "SweepConfig": "config",
    "load_config": "config",
    "parse_config": "config",
    "SweepError": "driver",
    "run_sweep": "driver",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
