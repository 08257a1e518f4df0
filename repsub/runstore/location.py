"""A run location (a local directory or an s3:// prefix), read: its files, its manifest, its Parquet files.

The base of the run's reader (repsub.runstore.reader) and writer (repsub.runstore.writer). Paths go through
``pyarrow.fs`` (repsub.runstore.storage), so the logic is the same locally and on S3.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from repsub.errors import RunError
from repsub.runstore.manifest import MANIFEST, check_fields, json_kind
from repsub.runstore.storage import explain_s3_error, filesystem_for, is_s3, read_whole, scrub


class RunLocation:
    """The files of one run location, read."""

    def __init__(self, uri: str | os.PathLike):
        self.uri = os.fspath(uri)
        self.fs, self.root = filesystem_for(self.uri)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

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

    def get_bytes(self, relative: str) -> bytes | None:
        """A file's content, or None if it does not exist."""
        path = self._path(relative)
        with self._storage_errors(f"{self.uri}: reading {relative}"):
            return read_whole(self.fs, path)  # on S3 one GET: one version of a replaced file, whole

    def list_names(self, relative_dir: str) -> list[str]:
        """Names of the visible files in a directory of the run (none if it does not exist)."""
        selector = pafs.FileSelector(self._path(relative_dir), allow_not_found=True)
        with self._storage_errors(f"{self.uri}: listing {relative_dir}"):
            infos = self.fs.get_file_info(selector)
        return sorted(
            i.base_name for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )

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
                f"{self.uri}: {MANIFEST} holds {json_kind(manifest)} {text.strip()[:40]!r}, not a run manifest "
                "(a JSON object): repair or remove it (a run's tables are described by it), or write to "
                "another output location"
            )
        return check_fields(manifest, self.uri)

    def run_invariant(self, key: str) -> object | None:
        """A run-wide setting recorded in the manifest (None for a new run or one without it)."""
        return ((self.read_manifest() or {}).get("invariants") or {}).get(key)


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
    return RunError(
        f"{uri}: cannot read {path} ({type(err).__name__}: {(scrub(str(err)).splitlines() or [''])[0][:200]}); "
        "the file is damaged (truncated, overwritten). Remove it (its rows are lost) or rerun the command that wrote "
        "it; a sweep rerun recomputes shards whose files do not verify"
    )
