"""Shared by the resume tests: a sweep driver started as a real process, killed once it has committed some shards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from repsub.store import RunWriter
from repsub.sweep import SweepConfig, load_config
from repsub.sweep.commit import ShardLedger


def kill_a_driver_midway(
    config_path: Path, shards_first: int = 3, timeout: float = 120
) -> tuple[SweepConfig, int]:
    """Run `repsub sweep` on a new local Ray in its own process group; SIGKILL the group (driver and the Ray it
    started) once `shards_first` shards are committed. Returns the config and the shards done at the kill."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "repsub.cli", "sweep", "--config", str(config_path), "--address", "local",
         "--no-progress"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = load_config(config_path)
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    deadline = time.monotonic() + timeout
    while len(ledger.done()) < shards_first and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return config, len(ledger.done())


def shards_already_done(driver_output: str) -> int:
    """The count a rerun reports as already done ("... N already done")."""
    return int(re.search(r"(\d+) already done", driver_output).group(1))
