"""Distributed sweeps on Ray: a YAML config planned into deterministic shards, run by long-lived actors,
committed shard by shard (resumable), merged, and summarized."""

from .config import SweepConfig, load_config, parse_config
from .driver import SweepError, run_sweep

__all__ = ["SweepConfig", "SweepError", "load_config", "parse_config", "run_sweep"]
