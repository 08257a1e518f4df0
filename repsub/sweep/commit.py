"""The shard-commit protocol, in one place.

1. A shard writes its result under a deterministic name, atomically (hidden temporary, then move):
   unit shards into the units table itself, data shards as partial sums under `_sweep/`.
2. Only then is its completion marker written, create-only: `RUN/_sweep/<plan>/done/<shard id>.json`.
3. The manifest is written last, once every shard is done.

A run lock (`RUN/_lock.json`, create-only, holding its owner and time) keeps two sweeps from writing
the same location at once; a stale one (its sweep died) is removed with `--force-unlock`.

A shard without a marker is not done: a rerun computes it again and overwrites the same names,
so every unit ends up exactly once whatever was interrupted where. Directories starting with '_'
are invisible to dataset readers.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import socket

import torch

from ..errors import RunError
from ..selectivity import ClassMeanAccumulator
from ..store import RunWriter, now_utc

LOCK = "_lock.json"


class RunLock:
    """At most one sweep writes a run location at a time (create-only lock file with owner and time)."""

    def __init__(self, writer: RunWriter):
        self.writer = writer
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "user": _user(), "since": now_utc()}

    def acquire(self, force: bool = False) -> None:
        if force:
            self.writer.delete(LOCK)
        if self.writer.put_if_absent(LOCK, json.dumps(self.owner).encode()):
            return
        held = self.holder() or {}
        if _is_dead_here(held) or _is_this_process(held):  # certainly stale: its sweep is not running
            print(
                f"note: removing the stale lock of pid {held.get('pid')} (not running a sweep) on {self.writer.uri}"
            )
            self.writer.delete(LOCK)
            if self.writer.put_if_absent(LOCK, json.dumps(self.owner).encode()):
                return
            held = self.holder() or {}
        raise RunError(
            f"{self.writer.uri} is locked by another sweep (host {held.get('host')}, pid {held.get('pid')}, user "
            f"{held.get('user')}, since {held.get('since')}); if that sweep is no longer running, rerun with "
            "--force-unlock"
        )

    def holder(self) -> dict | None:
        data = self.writer.get_bytes(LOCK)
        return json.loads(data) if data else None

    def release(self) -> None:
        if self.holder() == self.owner:  # never remove a lock someone else took with --force-unlock
            self.writer.delete(LOCK)


def _is_this_process(holder: dict) -> bool:
    """Left by an earlier sweep of this very process that could not remove it (storage was down)."""
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def _is_dead_here(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "unknown"


class ShardLedger:
    """Markers and partial results of one sweep plan (identified by the config's fingerprint)."""

    def __init__(self, writer: RunWriter, fingerprint: str):
        self.writer = writer
        self.base = f"_sweep/{fingerprint}"

    def done(self) -> set[str]:
        return {name.removesuffix(".json") for name in self.writer.list_names(f"{self.base}/done")}

    def mark_done(self, shard_id: str, info: dict) -> None:
        """Create the shard's marker. Create-only: if a retried attempt finds one, the first attempt's
        identical result is already committed, and that marker stays."""
        record = {"shard": shard_id, "completed_at": now_utc(), **info}
        self.writer.put_if_absent(f"{self.base}/done/{shard_id}.json", json.dumps(record).encode())

    def save_partial_sums(self, shard_id: str, accumulator: ClassMeanAccumulator) -> None:
        buffer = io.BytesIO()
        torch.save(accumulator.state_dict(), buffer)
        self.writer.put_bytes(f"{self.base}/selectivity/{shard_id}.pt", buffer.getvalue())

    def load_partial_sums(self, shard_id: str) -> ClassMeanAccumulator:
        data = self.writer.get_bytes(f"{self.base}/selectivity/{shard_id}.pt")
        if data is None:
            raise FileNotFoundError(f"partial sums of {shard_id} are missing although it is marked done")
        return ClassMeanAccumulator.from_state_dict(torch.load(io.BytesIO(data), weights_only=True))
