"""The shard-commit protocol, in one place.

1. A shard writes its result under a deterministic name, atomically (hidden temporary, then move):
   unit shards into the units table itself, data shards as partial sums under `_sweep/`.
2. Only then is its completion marker written: `RUN/_sweep/<plan>/done/<shard id>.json`.
3. The manifest is written last, once every shard is done.

A shard without a marker is not done: a rerun computes it again and overwrites the same names,
so every unit ends up exactly once whatever was interrupted where. Directories starting with '_'
are invisible to dataset readers.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import torch

from ..selectivity import ClassMeanAccumulator
from ..store import RunWriter


class ShardLedger:
    """Markers and partial results of one sweep plan (identified by the config's fingerprint)."""

    def __init__(self, writer: RunWriter, fingerprint: str):
        self.writer = writer
        self.base = f"_sweep/{fingerprint}"

    def done(self) -> set[str]:
        return {name.removesuffix(".json") for name in self.writer.list_names(f"{self.base}/done")}

    def mark_done(self, shard_id: str, info: dict) -> None:
        record = {"shard": shard_id, "completed_at": datetime.now(UTC).isoformat(timespec="seconds"), **info}
        self.writer.put_bytes(f"{self.base}/done/{shard_id}.json", json.dumps(record).encode())

    def marker(self, shard_id: str) -> dict | None:
        data = self.writer.get_bytes(f"{self.base}/done/{shard_id}.json")
        return None if data is None else json.loads(data)

    def save_partial_sums(self, shard_id: str, accumulator: ClassMeanAccumulator) -> None:
        buffer = io.BytesIO()
        torch.save(accumulator.state_dict(), buffer)
        self.writer.put_bytes(f"{self.base}/selectivity/{shard_id}.pt", buffer.getvalue())

    def load_partial_sums(self, shard_id: str) -> ClassMeanAccumulator:
        data = self.writer.get_bytes(f"{self.base}/selectivity/{shard_id}.pt")
        if data is None:
            raise FileNotFoundError(f"partial sums of {shard_id} are missing although it is marked done")
        return ClassMeanAccumulator.from_state_dict(torch.load(io.BytesIO(data), weights_only=True))
