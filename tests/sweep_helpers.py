"""Shared by the resume and fault tests: waiting for a sweep's first commits, and a sweep driver started as a real
process, killed once it has committed some shards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repsub.runstore.writer import RunWriter
from repsub.sweep import SweepConfig, load_config
from repsub.sweep.commit import ShardLedger


def wait_for_shards(ledger: ShardLedger, count: int, timeout: float, running=lambda: True) -> int:
    """Poll until `count` shards are committed, `timeout` seconds pass or `running()` turns false (a driver that
    ended); returns the shards done then. Faults injected after it hit a sweep with work under way."""
    deadline = time.monotonic() + timeout
    while len(ledger.done()) < count and time.monotonic() < deadline and running():
        time.sleep(0.05)
    return len(ledger.done())


def kill_a_driver_midway(
    config_path: Path, shards_first: int = 3, timeout: float = 120
) -> tuple[SweepConfig, int]:
    """Run `repsub sweep` on a new local Ray in its own process group; SIGKILL the group (driver and the Ray it
    started) once `shards_first` shards are committed. Returns the config and the shards done at the kill."""
    log = tempfile.TemporaryFile()  # noqa: SIM115  (the driver writes it while we wait)
    driver = subprocess.Popen(
        [sys.executable, "-m", "repsub.cli", "sweep", "--config", str(config_path), "--address", "local",
         "--no-progress"],
        start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    config = load_config(config_path)
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    wait_for_shards(ledger, shards_first, timeout, running=lambda: driver.poll() is None)
    if driver.poll() is not None:  # it ended by itself: the test cannot kill it midway, say why
        log.seek(0)
        raise AssertionError(
            f"the sweep driver exited ({driver.returncode}) before the kill:\n{log.read()[-3000:].decode(errors='replace')}"
        )
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return config, len(ledger.done())


def shards_already_done(driver_output: str) -> int:
    """The count a rerun reports as already done ("... N already done")."""
    return int(re.search(r"(\d+) already done", driver_output).group(1))


def small_sweep_config(
    out,
    data=None,
    *,
    seed: int = 3,
    units: str = "0-7",
    batch_size: int = 8,
    selectivity_batch: int = 4,
    images_per_shard: int = 5,
    **overrides,
) -> SweepConfig:
    """A sweep of the shallow CNN (random weights) small enough for a test: conv2 and fc5, a few units,
    16 px, 3 units a shard, 2 CPU workers; with `data`, a selectivity pass in shards of `images_per_shard`."""
    from repsub.sweep import parse_config

    raw = {
        "model": "shallow_cnn", "weights": "random", "seed": seed, "out": str(out), "layers": ["conv2", "fc5"],
        "units": units, "optimization": {"steps": 4, "image_size": 16, "batch_size": batch_size},
        "sharding": {"units_per_shard": 3}, "workers": {"count": 2, "cpus": 1},
    }  # fmt: skip
    if data:
        raw["selectivity"] = {"data": str(data), "image_size": 16, "batch_size": selectivity_batch, "workers": 0,
                              "images_per_shard": images_per_shard}  # fmt: skip
    raw.update(overrides)
    return parse_config(raw)


def unit_rows(uri) -> list[tuple[str, str, int]]:
    """(method, layer, unit) of every row of a run's units table, sorted: duplicates would show twice."""
    import repsub

    table = repsub.open_run(uri).units.to_table(columns=["method", "layer", "unit"])
    return sorted(zip(*(table[c].to_pylist() for c in ("method", "layer", "unit")), strict=True))


def start_local_ray(temp_dir: Path) -> None:
    """A private single-machine Ray for this test module (its own temp dir; 2 CPUs like the CI machine)."""
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=str(temp_dir)
    )
