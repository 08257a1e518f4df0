"""The shard-commit protocol, in one place.

1. A shard writes its result under a deterministic name, atomically (hidden temporary, then move):
   unit shards into the units table itself, data shards as partial sums (and partial exemplars and quantile
   sketches) under `_sweep/`, band shards their partial bands there too.
2. Only then is its completion marker written, create-only: `RUN/_sweep/<plan>/done/<shard id>.json`,
   holding the size and SHA-256 of every file the shard wrote.
3. The driver then publishes the shard's table files in the run's snapshot (the manifest's file list,
   repsub.runstore.snapshot), so readers see a committed shard's rows and never a shard being written; a
   resumed sweep publishes the files of every shard whose marker verifies.
4. The manifest's command record is written last, once every shard is done.

A rerun trusts a marker only when its files verify (`ShardLedger.verified_done`): a file that is missing,
truncated or overwritten makes the shard pending again, and its stale marker is removed. The run lock
(repsub.runstore.lock, taken by every writer) keeps two commands from writing the same location at once.

A shard without a marker is not done: a rerun computes it again and overwrites the same names,
so every unit ends up exactly once whatever was interrupted where. Directories starting with '_'
are invisible to dataset readers.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from repsub.core.bands import BandAccumulator
from repsub.core.exemplars import ExemplarAccumulator
from repsub.core.quantiles import QuantileSketches
from repsub.core.selectivity import ClassMeanAccumulator
from repsub.errors import RunError
from repsub.runstore.location import unreadable_file
from repsub.runstore.lock import LOCK, RunLock  # noqa: F401  (importable from here as before)
from repsub.runstore.manifest import now_utc
from repsub.runstore.tables import TABLES
from repsub.runstore.writer import RunWriter

VERIFY_THREADS = 8  # files read at once when verifying (S3 latency)


class ShardLedger:
    """Markers and partial results of one sweep plan (identified by the config's fingerprint)."""

    def __init__(self, writer: RunWriter, fingerprint: str):
        self.writer = writer
        self.base = f"_sweep/{fingerprint}"

    def done(self) -> set[str]:
        """The shards with a marker (unverified: see `verified_done`)."""
        return {name.removesuffix(".json") for name in self.writer.list_names(f"{self.base}/done")}

    def mark_done(self, shard_id: str, info: dict, files: list[str]) -> None:
        """Create the shard's marker, with the size and SHA-256 of each file it wrote (`files`: their paths as
        the writer returned them). Create-only: if a retried attempt finds one, the first attempt's identical
        result is already committed, and that marker stays."""
        record = {
            "shard": shard_id,
            "completed_at": now_utc(),
            **info,
            "files": [self.writer.file_record(path) for path in files],
        }
        self.writer.put_if_absent(self._marker(shard_id), json.dumps(record).encode())

    def _marker(self, shard_id: str) -> str:
        return f"{self.base}/done/{shard_id}.json"

    def verified_done(self) -> set[str]:
        """The shards whose marker's files are there with their recorded size and SHA-256. A marker that does
        not verify is removed (its shard is planned again), with a note naming the file and why."""
        names = sorted(self.done())
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            problems = dict(zip(names, pool.map(self._problem, names), strict=True))
        for shard_id, problem in problems.items():
            if problem:
                print(f"note: shard {shard_id} is computed again: {problem}", file=sys.stderr)
                self.writer.delete(self._marker(shard_id))
        return {shard_id for shard_id, problem in problems.items() if not problem}

    def committed_files(self, shard_ids) -> list[str]:
        """The table files (relative to the run) that the markers of `shard_ids` record: what the driver
        publishes in the run's snapshot (a data shard's partial sums under `_sweep/` are no table's)."""
        ids = sorted(shard_ids)
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            records = list(pool.map(self._record, ids))
        return [
            entry["path"]
            for record in records
            for entry in record.get("files") or []
            if str(entry.get("path")).partition("/")[0] in TABLES
        ]

    def _record(self, shard_id: str) -> dict:
        try:
            record = json.loads(self.writer.get_bytes(self._marker(shard_id)) or b"")
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _problem(self, shard_id: str) -> str | None:
        """Why a marked shard cannot be trusted, or None when its files verify."""
        record = self._record(shard_id)
        if not isinstance(record.get("files"), list) or not record["files"]:
            return "its marker records no verifiable files"
        for entry in record["files"]:
            path = self.writer._path(str(entry.get("path")))
            found = self.writer.file_digest(path)
            if found is None:
                return f"{path} is missing"
            if found["size"] != entry.get("size"):
                return f"{path} holds {found['size']} bytes, {entry.get('size')} were committed"
            if found["sha256"] != entry.get("sha256"):
                return f"{path} differs from the committed file (SHA-256)"
        return None

    def partial_sums_path(self, shard_id: str) -> str:
        return f"{self.base}/selectivity/{shard_id}.pt"

    def _save(self, relative: str, state: dict) -> str:
        """Write a shard's partial state (plain tensors, torch.save); returns the file's path (for its marker)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.writer.put_bytes(relative, buffer.getvalue())
        return self.writer._path(relative)

    def save_partial_sums(self, shard_id: str, accumulator: ClassMeanAccumulator) -> str:
        """Write a data shard's partial sums; returns the file's path (for its marker)."""
        return self._save(self.partial_sums_path(shard_id), accumulator.state_dict())

    def load_partial_sums(self, shard_id: str) -> ClassMeanAccumulator:
        return ClassMeanAccumulator.from_state_dict(self._load(self.partial_sums_path(shard_id), shard_id))

    def partial_exemplars_path(self, shard_id: str) -> str:
        return f"{self.base}/exemplars/{shard_id}.pt"

    def save_partial_exemplars(self, shard_id: str, accumulator: ExemplarAccumulator) -> str:
        """Write a data shard's exemplars (its images' top and bottom k); returns the file's path (for its marker)."""
        return self._save(self.partial_exemplars_path(shard_id), accumulator.state_dict())

    def load_partial_exemplars(self, shard_id: str) -> ExemplarAccumulator:
        return ExemplarAccumulator.from_state(self._load(self.partial_exemplars_path(shard_id), shard_id))

    def fit_samples_path(self, shard_id: str) -> str:
        return f"{self.base}/fit/{shard_id}.pt"

    def save_fit_samples(self, shard_id: str, state: dict) -> str:
        """Write a fit data shard's sampled vectors (and pca sums): plain tensors; returns the file's path."""
        return self._save(self.fit_samples_path(shard_id), state)

    def load_fit_samples(self, shard_id: str) -> dict:
        return self._load(self.fit_samples_path(shard_id), shard_id)

    def fitted_path(self, basis: str) -> str:
        return f"{self.base}/bases/{basis}.parquet"

    def save_fitted(self, basis: str, rows: dict[str, pa.Table]) -> str:
        """Write a fit shard's basis rows ({layer: its `bases` row}) as one Parquet file under `_sweep/`; the
        driver stores them in the run (repsub.commands.basis.store_bases). Returns the file's path."""
        buffer = io.BytesIO()
        table = pa.concat_tables(
            [row.add_column(0, "layer", pa.array([layer], pa.string())) for layer, row in rows.items()]
        )
        pq.write_table(table, buffer)
        self.writer.put_bytes(self.fitted_path(basis), buffer.getvalue())
        return self.writer._path(self.fitted_path(basis))

    def load_fitted(self, basis: str) -> dict[str, pa.Table]:
        """A fit shard's rows, {layer: row}, in the order it fitted them."""
        data = self.writer.get_bytes(self.fitted_path(basis))
        if data is None:
            raise RunError(
                f"{self.writer.uri}: the fitted basis {self.fitted_path(basis)} is missing although its fit shard "
                "is marked done; rerun the sweep (it recomputes shards whose files do not verify)"
            )
        table = pq.read_table(io.BytesIO(data))
        layers = table.column("layer").to_pylist()
        return {layer: table.slice(i, 1).drop_columns(["layer"]) for i, layer in enumerate(layers)}

    def partial_sketches_path(self, shard_id: str) -> str:
        return f"{self.base}/quantiles/{shard_id}.pt"

    def save_partial_sketches(self, shard_id: str, sketches: QuantileSketches) -> str:
        """Write a data shard's quantile sketches (serialized KLL); returns the file's path (for its marker)."""
        return self._save(self.partial_sketches_path(shard_id), sketches.state_dict())

    def load_partial_sketches(self, shard_id: str) -> QuantileSketches:
        return QuantileSketches.from_state(self._load(self.partial_sketches_path(shard_id), shard_id))

    @property
    def merged_quantiles_path(self) -> str:
        return f"{self.base}/quantiles/merged.pt"

    def fix_quantiles(self, merge) -> tuple[dict, str]:
        """The plan's merged quantiles, fixed once: `merge()`'s state, stored create-only, unless an earlier
        (killed) driver stored its own, which is kept (KLL merges are randomized: a second merge could differ,
        and the band shards done draw their edges from the first). Returns (the stored state, its digest: the
        band shards' ids name it)."""
        if self.writer.get_bytes(self.merged_quantiles_path) is None:
            buffer = io.BytesIO()
            torch.save(merge(), buffer)
            self.writer.put_if_absent(self.merged_quantiles_path, buffer.getvalue())
        return self.merged_quantiles()

    def merged_quantiles(self) -> tuple[dict, str]:
        """(The stored merged quantiles, the SHA-256 digest of their file, 16 hex digits)."""
        data = self.writer.get_bytes(self.merged_quantiles_path)
        if data is None:
            raise RunError(
                f"{self.writer.uri}: the merged quantiles {self.merged_quantiles_path} are missing; rerun the sweep"
            )
        try:
            state = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as err:  # torch raises several types for a damaged file
            raise unreadable_file(
                self.writer.uri, self.writer._path(self.merged_quantiles_path), err
            ) from None
        return state, hashlib.sha256(data).hexdigest()[:16]

    def partial_bands_path(self, shard_id: str) -> str:
        return f"{self.base}/bands/{shard_id}.pt"

    def save_partial_bands(self, shard_id: str, accumulator: BandAccumulator) -> str:
        """Write a band shard's bands (counts and samples of its images); returns the file's path."""
        return self._save(self.partial_bands_path(shard_id), accumulator.state_dict())

    def load_partial_bands(self, shard_id: str) -> BandAccumulator:
        return BandAccumulator.from_state(self._load(self.partial_bands_path(shard_id), shard_id))

    def _load(self, relative: str, shard_id: str) -> dict:
        """A data shard's saved state, read back (torch.load of plain tensors only)."""
        data = self.writer.get_bytes(relative)
        if data is None:
            raise RunError(
                f"{self.writer.uri}: the partial result {relative} of {shard_id} is missing although the shard is "
                "marked done; rerun the sweep (it recomputes shards whose files do not verify)"
            )
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as err:  # torch raises several types for a damaged file
            raise unreadable_file(self.writer.uri, self.writer._path(relative), err) from None
