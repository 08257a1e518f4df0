"""A run: Parquet tables hive-partitioned by layer, and a manifest saying how they were made.

    RUN/selectivity/layer=<layer>/selectivity.parquet
    RUN/units/layer=<layer>/<method>-<first>-<last>-<hash>.parquet
    RUN/activations/layer=<layer>/activations.parquet   (selectivity --save-activations)
    RUN/manifest.json

Paths go through ``pyarrow.fs`` (repsub.storage), so a run is a local directory or an
``s3://bucket/prefix``: the logic is the same. A file appears whole or not at all: locally it is
written under a hidden temporary name ('.' prefix, which dataset readers skip) and renamed into
place; on S3 an object becomes visible only when its upload completes, and an incomplete multipart
upload is no object at all. Re-running a command replaces its own rows, never duplicates them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import __version__
from .errors import RunError
from .storage import explain_s3_error, filesystem_for, is_s3, put_if_absent
from .tables import (  # noqa: F401  (re-exported)
    ACTIVATIONS,
    IMPORTANCE,
    LAYER_PARTITION,
    SELECTIVITY,
    TABLES,
    UNIT_STATUSES,
    UNITS,
    TableSpec,
    decode_png,
    png_bytes,
)

SCHEMA_VERSION = 2
# Version 1 runs (no per-unit status, rs_ties or objectives) are still read; their status is derived
# (units_status) but nothing is written into them.
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST = "manifest.json"

# The tables' schemas, names and builders live in repsub.tables; these names stay importable from here.
SELECTIVITY_SCHEMA, UNITS_SCHEMA = SELECTIVITY.schema, UNITS.schema
ACTIVATIONS_SCHEMA, IMPORTANCE_SCHEMA = ACTIVATIONS.schema, IMPORTANCE.schema


def units_status(table: pa.Table) -> pa.Array:
    """Each row's status: the stored one, or for rows of version 1 runs (null status) the same rule applied
    to the stored values: nonfinite if the activation or RS is not finite, no_response if the activation
    is <= 0, else ok."""
    activation = np.asarray(table.column("activation").to_numpy(zero_copy_only=False), dtype=np.float64)
    rs = np.asarray(table.column("rs").to_numpy(zero_copy_only=False), dtype=np.float64)
    derived = np.where(
        ~(np.isfinite(activation) & np.isfinite(rs)),
        "nonfinite",
        np.where(activation <= 0, "no_response", "ok"),
    )
    if "status" not in table.column_names:
        return pa.array(derived, pa.string())
    stored = table.column("status").combine_chunks()
    return pc.if_else(pc.is_null(stored), pa.array(derived, pa.string()), stored)


def full_schema(table: str) -> pa.Schema:
    """A table's schema as readers see it: the stored columns plus the `layer` partition column."""
    return TABLES[table].full_schema()


def units_file_name(method: str, units: list[int]) -> str:
    """The file of a block of units of `method` (see TableSpec.block_name)."""
    return UNITS.block_name(method, units)


def code_version() -> str:
    """The git commit of the repsub checkout (with '+dirty' for local changes), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"repsub {__version__}"


def library_versions() -> dict[str, str]:
    import scipy
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "repsub": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "scipy": scipy.__version__,
    }


class RunWriter:
    """Writes tables and the manifest of one run location."""

    def __init__(self, uri: str | os.PathLike):
        self.uri = os.fspath(uri)
        self.fs, self.root = filesystem_for(self.uri)
        self.command: str | None = None  # the manifest command writing now (a WriteSession sets it)
        self.written: dict[str, set[str]] = {}  # table scope ("units/am", "selectivity") -> layers written
        self._digests: dict[str, dict] = {}  # path -> {"size", "sha256"} of the files this writer wrote

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _staged(self, directory: str, name: str) -> str:
        # S3 has no directories: creating one would write marker objects up the key path, outside the run's
        # prefix that the worker's IAM policy allows.
        if not is_s3(self.uri):
            self.fs.create_dir(directory, recursive=True)
        return f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"

    @contextlib.contextmanager
    def _storage_errors(self, what: str):
        """On S3, turn the SDK's errors into one that names the endpoint and the location."""
        try:
            yield
        except OSError as err:
            if full := disk_full(err, self.uri):
                raise full from None
            if not is_s3(self.uri):
                raise
            raise explain_s3_error(err, what) from None

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

    def file_digest(self, path: str) -> dict | None:
        """{"size", "sha256"} of a stored file, read in chunks; None when it does not exist."""
        digest, size = hashlib.sha256(), 0
        with self._storage_errors(f"{self.uri}: reading {path}"):
            if not self._exists(path):
                return None
            with self.fs.open_input_stream(path) as f:
                while chunk := f.read(8 * 2**20):
                    digest.update(chunk)
                    size += len(chunk)
        return {"size": size, "sha256": digest.hexdigest()}

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

        from .storage import s3_client

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

    def get_bytes(self, relative: str) -> bytes | None:
        """A file's content, or None if it does not exist."""
        path = self._path(relative)
        with self._storage_errors(f"{self.uri}: reading {relative}"):
            if not self._exists(path):
                return None
            with self.fs.open_input_stream(path) as f:
                return f.read()

    def list_names(self, relative_dir: str) -> list[str]:
        """Names of the visible files in a directory of the run (none if it does not exist)."""
        selector = pafs.FileSelector(self._path(relative_dir), allow_not_found=True)
        with self._storage_errors(f"{self.uri}: listing {relative_dir}"):
            infos = self.fs.get_file_info(selector)
        return sorted(
            i.base_name for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )

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

    def run_invariant(self, key: str) -> object | None:
        """A run-wide setting recorded in the manifest (None for a new run or one without it)."""
        return ((self.read_manifest() or {}).get("invariants") or {}).get(key)

    def write_table(
        self, name: str, layer: str, rows: pa.Table, replace_existing: bool = True, command: str | None = None
    ) -> str:
        """Write one layer's rows of table `name` (repsub.tables); returns the file's path.

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

    def _read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """A stored file of the run, or a RunError that names it when it cannot be read (truncated...)."""
        try:
            with self._storage_errors(f"{self.uri}: reading {path}"):  # S3 failures: said as such
                return pq.read_table(path, filesystem=self.fs, columns=columns)
        except (pa.ArrowException, OSError) as err:  # Arrow's errors for a damaged file (local: any)
            raise unreadable_file(self.uri, path, err) from None

    def read_manifest(self) -> dict | None:
        """The manifest, None for a location without one; anything but a JSON object is refused, named."""
        data = self.get_bytes(MANIFEST)
        if data is None:
            return None
        text = data.decode(errors="replace")
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as err:
            raise RunError(f"{self.uri}: {MANIFEST} is not valid JSON ({err})") from None
        if not isinstance(manifest, dict):
            raise RunError(
                f"{self.uri}: {MANIFEST} holds {_json_kind(manifest)} {text.strip()[:40]!r}, not a run manifest "
                "(a JSON object): repair or remove it (a run's tables are described by it), or write to "
                "another output location"
            )
        return manifest

    def writing(self, command: str, identity: dict, config: dict, scopes=(), **options):
        """The context every command writes a run in (repsub.run_session.WriteSession): the run checked, its
        lock held, its identity and this invocation claimed in the manifest, leftovers removed."""
        from .run_session import WriteSession

        return WriteSession(self, command, identity, config, list(scopes), **options)

    def record(
        self,
        key: str,
        model_identity: dict,
        config: dict,
        catalog: list[dict] | None = None,
        invariants: dict | None = None,
    ) -> dict:
        """Record in the manifest (written last, atomically) that command `key` completed with `config`.
        `catalog` (the model's layers: name, units, module, kind, read, depth) and `invariants` (run-wide
        settings that every command must share, see check_run) are kept for the whole run."""
        manifest = self.read_manifest() or {
            "schema_version": SCHEMA_VERSION,
            "created_at": now_utc(),
            "commands": {},
        }
        manifest.update(
            model=model_identity,
            libraries=library_versions(),
            code_version=code_version(),
            updated_at=now_utc(),
        )
        if catalog is not None:
            manifest["catalog"] = catalog
        if invariants:
            manifest["invariants"] = {**(manifest.get("invariants") or {}), **invariants}
        manifest.setdefault("commands", {}).setdefault(key, {}).update(config=config, completed_at=now_utc())
        self.put_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
        return manifest


IDENTITY_KEYS = {"model": "architecture", "weights_sha256": "weights", "num_classes": "classes"}


def model_mismatch(recorded: dict, current: dict) -> str | None:
    """In words, how this command's model differs from the run's, or None when it is the same model: the same
    architecture, weights (by content hash, wherever the file lies) and class count."""
    differs = [key for key in IDENTITY_KEYS if recorded.get(key) != current.get(key)]
    if not differs:
        return None

    def described(identity: dict) -> str:
        sha = str(identity.get("weights_sha256") or "?")[:12]
        return (
            f"{identity.get('model', '?')} with weights {identity.get('weights', '?')!r} (sha256 {sha}…), "
            f"{identity.get('num_classes', '?')} classes"
        )

    hint = ""
    if differs == ["weights_sha256"] and recorded.get("weights") != current.get("weights"):
        hint = f" (the run was made with --weights {recorded.get('weights')})"
    return (
        f"the run's model is {described(recorded)}; this command's is {described(current)}. They differ in "
        f"{' and '.join(IDENTITY_KEYS[key] for key in differs)}: not mixing them. Use the run's model and "
        f"weights{hint}, or another output location"
    )


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_kind(value) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def disk_full(err: BaseException, uri: str) -> RunError | None:
    """A full disk (ENOSPC, or a quota) as a RunError saying so and where; None for any other error."""
    text = str(err)
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
        where = uri if "://" in uri else os.path.abspath(uri)
        return RunError(
            f"{where}: the disk is full (no space left on device) while writing the run; nothing half-written "
            "was kept. Free space there, or write to another location"
        )
    return None


def unreadable_file(uri: str, path: str, err: BaseException) -> RunError:
    """A stored file that cannot be read, named, with what to do."""
    from .storage import scrub

    return RunError(
        f"{uri}: cannot read {path} ({type(err).__name__}: {(scrub(str(err)).splitlines() or [''])[0][:200]}); "
        "the file is damaged (truncated, overwritten). Remove it (its rows are lost) or rerun the command that wrote "
        "it; a sweep rerun recomputes shards whose files do not verify"
    )


def __getattr__(name: str):
    """`Run` and `open_run` live in repsub.run (reading a run); importable from here as before."""
    if name in ("Run", "open_run"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
