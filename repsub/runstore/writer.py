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

Readers see only committed files (repsub.runstore.snapshot): a writer never changes a file a reader may hold.
A block or layer file whose name is taken gets a new one (`<name>-<random>.parquet`), a rewritten block is
written anew and the old file retired, and each `write_table` (or a `committing()` block of them) publishes
the new file list at once. A sweep's shard writer (`shard=True`) writes deterministic names and publishes
nothing: the driver publishes a shard's files once its marker exists (repsub.sweep.commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from repsub.errors import RunError
from repsub.runstore import snapshot
from repsub.runstore.location import RunLocation
from repsub.runstore.manifest import (
    MANIFEST,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    UPGRADABLE_SCHEMA_VERSIONS,
    encode_manifest,
    model_mismatch,
    now_utc,
)
from repsub.runstore.storage import explain_s3_error, is_s3, put_if_absent, s3_client
from repsub.runstore.tables import TABLES, UNIT_BASIS, file_basis, file_key, scope_name


class RunWriter(RunLocation):
    """Writes tables and files into one run location."""

    def __init__(self, uri: str | os.PathLike, shard: bool = False):
        super().__init__(uri)
        self.shard = shard  # a sweep worker's: deterministic names, published by the driver (module doc)
        self._batch: tuple[list[str], list[str]] | None = None  # (added, retired) of an open `committing()`
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
        written incrementally: write the temporary, then `publish` it (or `discard` it). The final name is
        one no file of the run has now (`_unused_name`)."""
        directory = self._partition_dir(table, layer)
        return self._staged(directory, name), f"{directory}/{self._unused_name(directory, name)}"

    def publish(self, staged: str, final: str) -> None:
        """Move a staged file into place and commit it, retiring the other files of its layer partition."""
        with self._storage_errors(f"{self.uri}: writing {final}"):
            self.fs.move(staged, final)
        table, _, partition = self._relative(final).partition("/")
        layer = partition.partition("/")[0].removeprefix("layer=")
        self.written.setdefault(table, set()).add(layer)
        superseded = [path for path in self.partition_files(table, layer) if path != final]
        self._commit([final], superseded)

    def discard(self, staged: str) -> None:
        if self._exists(staged):
            self.fs.delete_file(staged)

    # -------------------------------------------------------------- the committed file list (snapshot)

    def _relative(self, path: str) -> str:
        return path.removeprefix(self.root.rstrip("/") + "/")

    def _unused_name(self, directory: str, name: str) -> str:
        """`name`, or when a file has it (listed, retired or a stray) `<stem>-<random>.parquet`: a file a reader
        may hold is never overwritten. A shard writer keeps its deterministic name (repsub.sweep.commit)."""
        if self.shard or not self._exists(f"{directory}/{name}"):
            return name
        stem, dot, suffix = name.rpartition(".")
        return f"{stem}-{uuid.uuid4().hex[:8]}{dot}{suffix}"

    def partition_files(self, table: str, layer: str | None) -> list[str]:
        """The paths of the files of a table's layer partition (`layer` None: of a table without partitions):
        the committed ones (the manifest's list), or for a run without a list, those a directory listing
        finds; with what an open `committing()` block has added and retired so far."""
        inside_dir = table if layer is None else f"{table}/layer={layer}"
        directory = self._path(inside_dir)
        files = snapshot.listed(self.read_manifest() or {})
        if files is None:
            found = {f"{directory}/{name}" for name in self.list_names(inside_dir)}
        else:
            prefix = "" if layer is None else f"layer={layer}/"
            found = {
                self._path(table, inside) for inside in files.get(table, []) if inside.startswith(prefix)
            }
        if self._batch is not None:
            added, retired = ({self._path(r) for r in paths} for paths in self._batch)
            found = (found | {p for p in added if p.startswith(directory + "/")}) - retired
        return sorted(found)

    def write_named_file(self, table: str, layer: str, name: str, rows: pa.Table) -> str:
        """Write `rows` as the file of `name` in a layer partition of `table` (a basis: one file each), under a
        name no file has had (`<name>.parquet`, else `<name>-<random>.parquet`), the earlier file of that name
        retired: one commit. Returns its path relative to the run."""
        same_name = re.compile(rf"{re.escape(name)}(-[0-9a-f]{{8}})?\.parquet")
        with self.committing():
            superseded = [
                p for p in self.partition_files(table, layer) if same_name.fullmatch(p.rpartition("/")[2])
            ]
            path = self._replace_files(table, self._partition_dir(table, layer), name, rows, superseded)
        return self._relative(path)

    def retire_basis_files(self, tables: tuple[str, ...], layer: str, basis: str) -> list[str]:
        """Retire every file of `basis`'s rows in the `layer` partition of `tables` (its own files:
        repsub.runstore.tables.file_key), in one commit; returns their paths relative to the run."""
        with self.committing():
            retired = [
                path for table in tables for path in self.partition_files(table, layer)
                if file_basis(path.rsplit("/", 1)[-1]) == basis
            ]  # fmt: skip
            self._commit([], retired)
        return [self._relative(path) for path in retired]

    def write_whole_table(self, name: str, rows: pa.Table) -> str:
        """Replace a table without layer partitions (the exemplars' thumbnails) by `rows`, under a name no
        file has had, the old files retired: one commit."""
        with self.committing():
            return self._replace_files(name, self._path(name), name, rows, self.partition_files(name, None))

    def _replace_files(
        self, table: str, directory: str, stem: str, rows: pa.Table, superseded: list[str]
    ) -> str:
        """Write `rows` as `<stem>.parquet` in `directory` (or, where a file has that name, under a new one) and
        retire `superseded` in the same commit; returns the new file's path."""
        spec = TABLES[table]
        file_name = self._unused_name(directory, f"{stem}.parquet")
        path = self._write_parquet(spec.conform(rows), directory, file_name, spec.row_group)
        self._commit([path], superseded)
        return path

    @contextlib.contextmanager
    def committing(self):
        """Publish every file written inside at once, as one new snapshot (nested blocks join the outer one).
        On an error nothing is published and the block's new files are removed (no reader can hold them)."""
        if self._batch is not None:
            yield
            return
        self._batch = batch = ([], [])
        try:
            yield
        except BaseException:
            self._batch = None
            for relative in batch[0]:
                with contextlib.suppress(Exception):
                    self.delete(relative)
            raise
        self._batch = None
        self.commit_files(*batch)

    def _commit(self, added: list[str], retired: list[str]) -> None:
        self.commit_files([self._relative(p) for p in added], [self._relative(p) for p in retired])

    def commit_files(self, added: list[str], retired: list[str] = ()) -> None:
        """Publish `added` and retire `retired` (paths relative to the run) as a new snapshot: one manifest
        write. A run without a file list (read by listing) has its retired files deleted at once instead."""
        if self.shard or not (added or retired):
            return
        if self._batch is not None:
            pending, retiring = self._batch
            pending.extend(added)
            for relative in retired:
                if relative in pending:  # written in this block, never published: no reader holds it
                    pending.remove(relative)
                    self.delete(relative)
                else:
                    retiring.append(relative)
            return
        manifest = self.read_manifest()
        if manifest is None or snapshot.listed(manifest) is None:
            for relative in retired:
                self.delete(relative)
            return
        snapshot.commit(manifest, list(added), list(retired), now_utc())
        self.put_bytes(MANIFEST, encode_manifest(manifest))

    def _stored_table_files(self) -> list[str]:
        """The visible table files in storage, relative to the run (what a directory listing reads)."""
        found = []
        for table in TABLES:
            selector = pafs.FileSelector(self._path(table), recursive=True, allow_not_found=True)
            with self._storage_errors(f"{self.uri}: listing {table}"):
                infos = self.fs.get_file_info(selector)
            found += [
                self._relative(i.path)
                for i in infos
                if i.type == pafs.FileType.File
                and i.base_name.endswith(".parquet")
                and not i.base_name.startswith((".", "_"))
                and "layer=" in i.path
            ]
        return sorted(found)

    def reconcile_files(self, manifest: dict) -> None:
        """Under the run lock, in a manifest about to be written: start the file list of a run read by listing
        until now (with every table file found), adopt table files written outside a write session (by
        hand, by a command killed before its commit, by a sweep's workers), delete expired retired files."""
        found = self._stored_table_files()
        if snapshot.listed(manifest) is None:
            manifest[snapshot.FILES] = {}
            strays = found
        else:
            known = snapshot.listed_paths(manifest) | set(manifest.get(snapshot.RETIRED) or {})
            strays = [relative for relative in found if relative not in known]
            if strays:
                print(f"note: {len(strays)} table file(s) written outside a command now belong to the run's "
                      "snapshot", file=sys.stderr)  # fmt: skip
        snapshot.commit(manifest, strays, [], now_utc())
        self.collect_garbage(manifest)

    def collect_garbage(self, manifest: dict) -> list[str]:
        """Under the run lock: delete the retired files whose grace period is over (repsub.runstore.snapshot),
        and forget them in `manifest` (about to be written); returns them."""
        gone = snapshot.expired(manifest, datetime.now(UTC), snapshot.grace_seconds())
        for relative in gone:
            self.delete(relative)
            manifest[snapshot.RETIRED].pop(relative)
        return gone

    def check_run(self, model_identity: dict, invariants: dict | None = None) -> None:
        """Refuse a location that cannot be written, or holds a run of another schema version, of another
        model/weights, or made with other run-wide settings (`invariants`, e.g. the spatial reduction):
        before any work, so nothing is written there."""
        self.preflight()
        manifest = self.read_manifest()
        if manifest is None:
            return
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION and version not in UPGRADABLE_SCHEMA_VERSIONS:
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
        Rows without a `command` column get `command` (default: the command of the writer's session), rows
        without a `basis` column the unit basis; the rows of one write are of one basis, and replace only that
        basis's rows (its own files: repsub.runstore.tables.file_key)."""
        spec = TABLES[name]
        if "command" in spec.schema.names and "command" not in rows.column_names:
            rows = rows.append_column(
                "command", pa.array([command or self.command] * rows.num_rows, pa.string())
            )
        if spec.has_basis and "basis" not in rows.column_names:
            rows = rows.append_column("basis", pa.array([UNIT_BASIS] * rows.num_rows, pa.string()))
        rows = spec.conform(rows)
        basis = self._one_value(rows, "basis", name) if spec.has_basis else UNIT_BASIS
        directory = self._partition_dir(name, layer)
        with self.committing():
            if spec.key is None:
                stem = file_key(name, basis)
                superseded = [
                    path for path in self.partition_files(name, layer)
                    if not spec.has_basis or file_basis(path.rsplit("/", 1)[-1]) == basis
                ]  # fmt: skip
                path = self._replace_files(name, directory, stem, rows, superseded)
                self.written.setdefault(scope_name(name, None, basis), set()).add(layer)
                return path
            key = self._one_value(rows, spec.key, name)
            stem = file_key(key, basis)
            units = [int(u) for u in rows.column("unit").to_pylist()]
            file_name = self._unused_name(directory, spec.block_name(stem, units))
            if replace_existing:
                self.drop_rows(name, stem, layer, set(units), keep_files={file_name} if self.shard else set())
            path = self._write_parquet(rows, directory, file_name, spec.row_group)
            self._commit([path], [])
            self.written.setdefault(scope_name(name, key, basis), set()).add(layer)
            return path

    @staticmethod
    def _one_value(rows: pa.Table, column: str, name: str) -> str:
        values = set(rows.column(column).to_pylist())
        if len(values) != 1:
            raise ValueError(
                f"a block of the {name} table holds one {column}, got {sorted(map(str, values))}"
            )
        return values.pop()

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
        """Remove the given units' rows of `key` (a method, an ablation, `key@basis`: file_key) from the files of a block table's
        layer partition, except the files named in `keep_files` (a sweep's own shard files). A file that
        holds some of them is never changed: what it keeps is written to a new file and it is retired, in
        one commit."""
        spec = TABLES[name]
        directory = self._partition_dir(name, layer)
        with self.committing():
            for path in self.partition_files(name, layer):
                base = path.rsplit("/", 1)[-1]
                if base in keep_files or not (base.startswith(f"{key}-") and base.endswith(".parquet")):
                    continue
                stored = self._read_parquet(path, ["unit"]).column("unit").to_pylist()
                if not units.intersection(stored):
                    continue
                kept = self._read_parquet(path)
                kept = kept.filter(pa.array([u not in units for u in stored]))
                added = []
                if kept.num_rows:
                    rest = [int(u) for u in kept.column("unit").to_pylist()]
                    new_name = self._unused_name(directory, spec.block_name(key, rest))
                    added.append(self._write_parquet(kept, directory, new_name, spec.row_group))
                self._commit(added, [path])
