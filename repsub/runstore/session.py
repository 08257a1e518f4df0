"""How every command writes into a run: one context, the same for `selectivity`, `visualize`, `importance` and
`sweep`.

    with WriteSession(RunWriter(out), "visualize/am", identity, config, scopes, invariants=..., catalog=...) as session:
        writer.write_units(...)          # rows get `command` = "visualize/am"
        session.complete(config)         # the manifest records the invocation as completed

On entry, before anything is written: the run is checked (schema version, model, run-wide settings) and so is
mixing (repsub.runstore.provenance). Then the run lock is taken (repsub.runstore.lock), checked again under it, the run's
identity and this invocation are claimed in the manifest (created create-only for a new run, so a killed
command's rows are never taken for another model's), and `.tmp-*` leftovers of killed writers are removed.
On an error the invocation keeps only what it wrote (dropped if nothing), a manifest this session created
for nothing is removed with the empty directories, its own temporary files go, a full disk is said in
words, and the lock is released.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pyarrow.fs as pafs

from repsub.errors import RunError
from repsub.runstore.location import disk_full
from repsub.runstore.lock import LOCK, RunLock
from repsub.runstore.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    code_version,
    encode_manifest,
    library_versions,
    now_utc,
)
from repsub.runstore.provenance import (
    Scope,
    finish_invocation,
    mixing_conflicts,
    refuse_mixing,
    start_invocation,
)


class WriteSession:
    def __init__(
        self,
        writer,
        command: str,
        identity: dict,
        config: dict,
        scopes: list[Scope],
        invariants: dict | None = None,
        catalog: list[dict] | None = None,
        allow_mixed: bool = False,
        force_unlock: bool = False,
        keep_on_failure=None,  # a sweep: () -> whether shards were committed (by workers); then its record stays
    ):
        self.writer, self.command, self.identity, self.config = writer, command, identity, config
        self.scopes, self.invariants, self.catalog = scopes, invariants or {}, catalog
        self.allow_mixed, self.force_unlock, self.keep_on_failure = allow_mixed, force_unlock, keep_on_failure
        self.lock = RunLock(writer, command)
        self.seq: int | None = None
        self.created = False  # this session created the manifest
        self.existed = True  # the run location existed before this session
        self.completed = False

    # -------------------------------------------------------------- entry

    def _checked(self) -> tuple[dict | None, list[str]]:
        """The manifest, after the run checks; the mixing conflicts (refused here unless allowed)."""
        self.writer.check_run(self.identity, self.invariants)
        manifest = self.writer.read_manifest()
        conflicts = mixing_conflicts(manifest or {}, self.scopes)
        if conflicts and not self.allow_mixed:
            raise refuse_mixing(self.writer.uri, conflicts)
        return manifest, conflicts

    def __enter__(self) -> WriteSession:
        self._checked()  # refusals before the lock: nothing is written, not even a directory
        existed = self._root_exists()
        self.lock.acquire(force=self.force_unlock)
        try:
            manifest, conflicts = self._checked()  # again, under the lock
            if conflicts:
                print(f"note: mixing allowed (--allow-mixed): {'; '.join(conflicts)}", file=sys.stderr)
            creating = manifest is None
            manifest = manifest or {"schema_version": SCHEMA_VERSION, "created_at": now_utc(), "commands": {}}
            if (
                manifest.get("schema_version") != SCHEMA_VERSION
            ):  # check_run let only an upgradable one through
                print(f"note: {self.writer.uri}: schema version {manifest.get('schema_version')} upgraded to "
                      f"{SCHEMA_VERSION} (its rows are read as the unit basis's)", file=sys.stderr)  # fmt: skip
                manifest["schema_version"] = SCHEMA_VERSION
            self._describe(manifest)
            self.writer.reconcile_files(manifest)  # the file list: started, strays adopted, garbage collected
            inv = start_invocation(manifest, self.command, self.config, self.scopes, conflicts, now_utc())
            self.seq = inv["seq"]
            data = encode_manifest(manifest)
            if creating:
                if not self.writer.put_if_absent(MANIFEST, data):  # only a --force-unlock race gets here
                    raise RunError(f"{self.writer.uri}: another command created the run meanwhile; rerun")
                self.created = True
            else:
                self.writer.put_bytes(MANIFEST, data)
            if removed := self.writer.remove_leftovers():
                print(
                    f"note: removed {removed} temporary file(s) left by an interrupted writer",
                    file=sys.stderr,
                )
        except BaseException as err:
            if self.created:  # the claim of a session that never began
                with contextlib.suppress(Exception):
                    self.writer.delete(MANIFEST)
            self._release()
            if not existed:
                self._remove_empty_root()
            full = disk_full(err, self.writer.uri)
            if full:
                raise full from None
            raise
        self.existed = existed
        self.writer.command = self.command
        self.writer.written = {}
        return self

    def _describe(self, manifest: dict) -> None:
        manifest.update(
            model=self.identity,
            libraries=library_versions(),
            code_version=code_version(),
            updated_at=now_utc(),
        )
        if self.catalog is not None:
            manifest["catalog"] = self.catalog
        if self.invariants:
            manifest["invariants"] = {**(manifest.get("invariants") or {}), **self.invariants}

    def extend(self, scopes: list[Scope], update=None) -> None:
        """Scopes known only once the session is under way (a sweep's bases: their content hashes come from its
        fit), checked for mixing and recorded in the invocation as those given at its start; `update(manifest)`
        adds what goes beside them (the fitted bases), in the same manifest write."""
        manifest = self.writer.read_manifest() or {}
        conflicts = mixing_conflicts(manifest, scopes)
        if conflicts and not self.allow_mixed:
            raise refuse_mixing(self.writer.uri, conflicts)
        entry = (manifest.get("commands") or {}).get(self.command) or {}
        inv = next((i for i in entry.get("invocations") or [] if i.get("seq") == self.seq), None)
        if inv is None:
            raise RunError(
                f"{self.writer.uri}: the manifest lost this {self.command} invocation ({self.seq})"
            )
        inv.setdefault("writes", {}).update({scope.name: scope.record() for scope in scopes})
        if conflicts:
            inv.setdefault("allowed_mixed", []).extend(conflicts)
        if update is not None:
            update(manifest)
        self.writer.put_bytes(MANIFEST, encode_manifest(manifest))
        self.scopes = [*self.scopes, *scopes]

    # -------------------------------------------------------------- exit

    def complete(self, config: dict | None = None, catalog: list[dict] | None = None, update=None) -> dict:
        """Record the invocation as completed (with its final `config`); the manifest is written last.
        `update(manifest)` adds what the command records beside its invocation (the bases it fitted)."""
        manifest = self.writer.read_manifest() or {}
        if catalog is not None:
            self.catalog = catalog
        self._describe(manifest)
        if update is not None:
            update(manifest)
        finish_invocation(manifest, self.command, self.seq, "completed", now_utc(), config)
        self.writer.collect_garbage(manifest)
        self.writer.put_bytes(MANIFEST, encode_manifest(manifest))
        self.completed = True
        return manifest

    def __exit__(self, exc_type, exc, tb) -> None:
        self.writer.command = None
        left_nothing = False
        try:
            if exc is not None and not self.completed:
                left_nothing = self._record_failure()
        finally:
            self._release()
        if left_nothing and not self.existed:
            self._remove_empty_root()
        if exc is not None and (full := disk_full(exc, self.writer.uri)):
            raise full from None

    def _record_failure(self) -> bool:
        """Keep what the command wrote, described; remove what it leaves for nothing (best effort: the error
        that got us here is the one to report). True when the run holds nothing of this session's."""
        try:
            self.writer.remove_leftovers()
            manifest = self.writer.read_manifest() or {}
            kept = self.keep_on_failure is not None and self.keep_on_failure()
            written = None if kept else self.writer.written
            finish_invocation(manifest, self.command, self.seq, "failed", now_utc(), written=written)
            if self.created and not _has_invocations(manifest) and not self._holds_files():
                self.writer.delete(MANIFEST)
                return True
            self.writer.put_bytes(MANIFEST, encode_manifest(manifest))
        except Exception as cleanup:  # storage down, disk full...
            print(f"warning: could not record the failure in the manifest: {cleanup}", file=sys.stderr)
        return False

    def _holds_files(self) -> bool:
        """Whether the run holds any file but its manifest and lock (rows of this session, say, whose command
        died before recording them: the claim stays, so no other model is written beside them)."""
        selector = pafs.FileSelector(self.writer.root, recursive=True, allow_not_found=True)
        infos = self.writer.fs.get_file_info(selector)
        names = {MANIFEST, LOCK}
        return any(i.type == pafs.FileType.File and i.path.rsplit("/", 1)[-1] not in names for i in infos)

    def _release(self) -> None:
        try:
            self.lock.release()
        except Exception as err:  # storage unreachable: say so, without hiding the command's own error
            print(f"warning: could not remove the run lock: {err}", file=sys.stderr)

    # -------------------------------------------------------------- local directories

    def _root_exists(self) -> bool:
        if "://" in self.writer.uri:
            return True  # S3: no directories to leave behind
        return os.path.exists(self.writer.root)

    def _remove_empty_root(self) -> None:
        """Remove the run directory this session made, if nothing is in it but empty directories."""
        root = self.writer.root
        if "://" in self.writer.uri or not os.path.isdir(root):
            return
        for directory, _, files in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
            if files:
                return
            os.rmdir(directory)


def _has_invocations(manifest: dict) -> bool:
    return any((entry or {}).get("invocations") for entry in (manifest.get("commands") or {}).values())
