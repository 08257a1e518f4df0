"""Writing a run: Parquet tables hive-partitioned by layer, and files beside them.

    RUN/selectivity/layer=<layer>/selectivity.parquet
    RUN/units/layer=<layer>/<method>-<first>-<last>-<hash>.parquet
    RUN/importance/layer=<layer>/<ablation>-<first>-<last>-<hash>.parquet
    RUN/activations/layer=<layer>/activations.parquet   (selectivity --save-activations)
    RUN/manifest.json

A file appears whole or not at all: locally it is written under a hidden temporary name ('.' prefix, which
dataset readers skip) and renamed into place; on S3 an object becomes visible only when its upload completes,
and an incomplete multipart upload is no object at all. Re-running a command replaces its own rows, never
duplicates them. Every command writes inside a write session (repsub.runstore.session), which holds the run's
lock and records the command in the manifest.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from repsub.errors import RunError
from repsub.runstore.location import RunLocation
from repsub.runstore.manifest import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, model_mismatch
from repsub.runstore.storage import explain_s3_error, is_s3, put_if_absent, s3_client
from repsub.runstore.tables import TABLES


class RunWriter(RunLocation):
    """Writes tables and files into one run location."""

    def __init__(self, uri: str | os.PathLike):
        super().__init__(uri)
        self.command: str | None = None  # the manifest command writing now (a WriteSession sets it)
        self.written: dict[str, set[str]] = {}  # table scope ("units/am", "selectivity") -> layers written
        self._digests: dict[str, dict] = {}  # path -> {"size", "sha256"} of the files this writer wrote

    def _staged(self, directory: str, name: str) -> str:
        # S3 has no directories: creating one would write marker objects up the key path, outside the run's
        # prefix that the worker's IAM policy allows.
        if not is_s3(self.uri):
            self.fs.create_dir(directory, recursive=True)
        return f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"

    def _write_bytes(self, path: str, data: bytes) -> None:
        """Make `path` hold `data`, all or nothing. Locally: a hidden temporary file, then a rename. On S3 the
        object appears only when its upload completes, and the content is complete before the upload starts."""
        directory, _, name = path.rpartition("/")
        with self._storage_errors(f"{self.uri}: writing {path}"):
            if is_s3(self.uri):
                with self.fs.open_output_stream(path) as f:
                    f.write(data)
            else:
                staged = self._staged(directory, name)
                try:
                    with self.fs.open_output_stream(staged) as f:
                        f.write(data)
                    self.fs.move(staged, path)
                except BaseException:
                    if self._exists(staged):
                        self.fs.delete_file(staged)
                    raise
        self._digests[path] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def file_record(self, path: str) -> dict:
        """{"path" (relative to the run), "size", "sha256"} of a file this writer wrote, else read back."""
        digest = self._digests.get(path) or self.file_digest(path)
        return {"path": path.removeprefix(self.root.rstrip("/") + "/"), **digest}

    def _write_parquet(
        self, table: pa.Table, directory: str, name: str, row_group_size: int | None = None
    ) -> str:
        """Write `table` to directory/name atomically (see `_write_bytes`)."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, row_group_size=row_group_size, compression="zstd")
        final = f"{directory}/{name}"
        self._write_bytes(final, buffer.getvalue().to_pybytes())
        return final

    def put_bytes(self, relative: str, data: bytes) -> None:
        """Write a small file under the run atomically."""
        self._write_bytes(self._path(relative), data)

    def put_if_absent(self, relative: str, data: bytes) -> bool:
        """Create a file only if it does not exist yet (atomic); False if it was already there."""
        with self._storage_errors(f"{self.uri}: creating {relative}"):
            return put_if_absent(self.fs, self._path(relative), data)

    def delete(self, relative: str) -> None:
        path = self._path(relative)
        with self._storage_errors(f"{self.uri}: deleting {relative}"):
            if self._exists(path):
                self.fs.delete_file(path)

    def remove_leftovers(self) -> int:
        """Delete hidden temporary files that an interrupted writer left behind; returns how many.
        Only safe while no other writer is at work on this run (a WriteSession holds the run lock)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        with self._storage_errors(f"{self.uri}: listing"):
            infos = self.fs.get_file_info(selector)
            leftovers = [
                i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(".tmp-")
            ]
            for path in leftovers:
                self.fs.delete_file(path)
        return len(leftovers)

    def preflight(self) -> None:
        """Fail early, before any work, if the location cannot be written (missing bucket, no access...)."""
        if not is_s3(self.uri):
            return
        from botocore.exceptions import BotoCoreError, ClientError

        bucket = self.root.split("/", 1)[0]
        try:
            s3_client().head_bucket(Bucket=bucket)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            meaning = {"404": "NoSuchBucket", "NoSuchBucket": "NoSuchBucket", "403": "AccessDenied"}.get(
                code, code
            )
            raise explain_s3_error(Exception(meaning), self.uri) from None
        except BotoCoreError as err:
            raise explain_s3_error(Exception(f"{type(err).__name__}: {err}"), self.uri) from None

    def _partition_dir(self, table: str, layer: str) -> str:
        return self._path(table, f"layer={layer}")

    def stage(self, table: str, layer: str, name: str) -> tuple[str, str]:
        """(hidden temporary path, final path) of a file of `table` in a layer partition, for a file
        written incrementally: write the temporary, then `publish` it (or `discard` it)."""
        directory = self._partition_dir(table, layer)
        return self._staged(directory, name), f"{directory}/{name}"

    def publish(self, staged: str, final: str) -> None:
        """Move a staged file into place (replacing the file there)."""
        with self._storage_errors(f"{self.uri}: writing {final}"):
            self.fs.move(staged, final)
        table, _, partition = final.removeprefix(self.root.rstrip("/") + "/").partition("/")
        self.written.setdefault(table, set()).add(partition.partition("/")[0].removeprefix("layer="))

    def discard(self, staged: str) -> None:
        if self._exists(staged):
            self.fs.delete_file(staged)

    def check_run(self, model_identity: dict, invariants: dict | None = None) -> None:
        """Refuse a location that cannot be written, or holds a run of another schema version, of another
        model/weights, or made with other run-wide settings (`invariants`, e.g. the spatial reduction):
        before any work, so nothing is written there."""
        self.preflight()
        manifest = self.read_manifest()
        if manifest is None:
            return
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            readable = (
                " (this repsub still reads it: summary, report, open_run)"
                if version in READABLE_SCHEMA_VERSIONS
                else ""
            )
            raise RunError(
                f"{self.uri} holds a run of schema version {version}{readable}; this repsub writes version "
                f"{SCHEMA_VERSION} only: write new results to another output location"
            )
        mismatch = model_mismatch(manifest.get("model") or {}, model_identity)
        if mismatch:
            raise RunError(f"{self.uri} holds results of another model or weights: {mismatch}")
        recorded = manifest.get("invariants") or {}
        for key, value in (invariants or {}).items():
            if key in recorded and recorded[key] != value:
                raise RunError(
                    f"{self.uri} was made with {key} {recorded[key]!r}; this command asks for {value!r}. "
                    f"Results made with another {key} cannot be compared within one run: use {key} "
                    f"{recorded[key]!r} or another output location"
                )

    def write_table(
        self, name: str, layer: str, rows: pa.Table, replace_existing: bool = True, command: str | None = None
    ) -> str:
        """Write one layer's rows of table `name` (repsub.runstore.tables); returns the file's path.

        A whole-layer table (selectivity) replaces the layer's file. A block table (units, importance) adds
        the rows, all of one key (method, ablation), under the block's deterministic name; with
        `replace_existing`, rows already stored for the same key and units in other files are removed.
        Rows without a `command` column get `command` (default: the command of the writer's session)."""
        spec = TABLES[name]
        if "command" in spec.schema.names and "command" not in rows.column_names:
            rows = rows.append_column(
                "command", pa.array([command or self.command] * rows.num_rows, pa.string())
            )
        rows = spec.conform(rows)
        directory = self._partition_dir(name, layer)
        if spec.key is None:
            path = self._write_parquet(rows, directory, f"{name}.parquet", spec.row_group)
            self.written.setdefault(name, set()).add(layer)
            return path
        keys = set(rows.column(spec.key).to_pylist())
        if len(keys) != 1:
            raise ValueError(
                f"a block of the {name} table holds one {spec.key}, got {sorted(map(str, keys))}"
            )
        key = keys.pop()
        units = [int(u) for u in rows.column("unit").to_pylist()]
        file_name = spec.block_name(key, units)
        if replace_existing:
            self.drop_rows(name, key, layer, set(units), keep_files={file_name})
        path = self._write_parquet(rows, directory, file_name, spec.row_group)
        self.written.setdefault(f"{name}/{key}", set()).add(layer)
        return path

    def write_selectivity(self, layer: str, rows: pa.Table, command: str | None = None) -> str:
        return self.write_table("selectivity", layer, rows, command=command)

    def write_units(
        self,
        method: str,
        layer: str,
        rows: pa.Table,
        replace_existing: bool = True,
        command: str | None = None,
    ) -> str:
        if set(rows.column("method").to_pylist()) != {method}:
            raise ValueError(f"units rows of another method than {method}")
        return self.write_table("units", layer, rows, replace_existing, command=command)

    def drop_rows(
        self, name: str, key: str, layer: str, units: set[int], keep_files: set[str] = frozenset()
    ) -> None:
        """Remove the given units' rows of `key` (a method, an ablation) from the files of a block table's
        layer partition, except the files named in `keep_files` (which a caller is about to overwrite)."""
        spec = TABLES[name]
        directory = self._partition_dir(name, layer)
        selector = pafs.FileSelector(directory, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            base = info.base_name
            if base in keep_files or not (base.startswith(f"{key}-") and base.endswith(".parquet")):
                continue
            stored = self._read_parquet(info.path, ["unit"]).column("unit").to_pylist()
            if not units.intersection(stored):
                continue
            kept = self._read_parquet(info.path)
            kept = kept.filter(pa.array([u not in units for u in stored]))
            if kept.num_rows:
                self._write_parquet(kept, directory, base, spec.row_group)
            else:
                self.fs.delete_file(info.path)
