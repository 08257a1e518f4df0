"""A run's committed files: the snapshot every reader reads, kept in the manifest.

    manifest["files"]   = {"units": ["layer=fc5/am-00000-00063-1a2b3c4d.parquet", ...], "selectivity": [...]}
    manifest["retired"] = {"units/layer=fc5/am-00000-00063-1a2b3c4d.parquet": "2025-01-01T00:00:00+00:00"}

A reader reads the manifest once (one object: an atomic rename locally, a single PUT on S3) and opens exactly
the files it lists, so it sees one committed state of the run whatever a writer does meanwhile. A writer
never changes a file a snapshot may list: new and rewritten blocks get names no file has had
(repsub.runstore.writer), and a commit publishes a new manifest with the new list. A superseded file is
`retired`: left in place, no longer listed, and deleted by a later write session (under the run lock) once it
has been retired for longer than the grace period, so a reader that opened an older snapshot less than that
ago still finds every file it lists (docs/performance.md, "Consistent reads while a run is written").

A manifest without `files` (runs written before the list, schema v1 and v2) is read by listing the table
directories, as before; the first write session into such a run lists what it finds.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

FILES = "files"
RETIRED = "retired"
GRACE_ENV = "REPSUB_SNAPSHOT_GRACE_S"
DEFAULT_GRACE_S = 3600.0  # longer than any report or notebook read of a VGG16 run (docs/performance.md)


def grace_seconds() -> float:
    """How long a retired file stays readable (REPSUB_SNAPSHOT_GRACE_S, default one hour)."""
    return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))


def listed(manifest: dict) -> dict[str, list[str]] | None:
    """{table: paths relative to the table's directory} of the committed snapshot; None for a run read by
    listing (no file list)."""
    files = manifest.get(FILES)
    return files if isinstance(files, dict) else None


def table_of(relative: str) -> tuple[str, str]:
    """'units/layer=fc5/x.parquet' -> ('units', 'layer=fc5/x.parquet')."""
    table, _, inside = relative.partition("/")
    return table, inside


def listed_paths(manifest: dict) -> set[str]:
    """Every listed file, relative to the run."""
    return {f"{table}/{inside}" for table, names in (listed(manifest) or {}).items() for inside in names}


def commit(manifest: dict, added: list[str], retired: list[str], now: str) -> None:
    """Publish `added` and retire `retired` (paths relative to the run) in a manifest with a file list."""
    files = {table: set(names) for table, names in (listed(manifest) or {}).items()}
    graveyard = dict(manifest.get(RETIRED) or {})
    for relative in retired:
        table, inside = table_of(relative)
        if inside in files.get(table, set()):
            files[table].discard(inside)
            graveyard[relative] = now
    for relative in added:
        table, inside = table_of(relative)
        files.setdefault(table, set()).add(inside)
        graveyard.pop(relative, None)  # a name published again (a sweep shard's) is live
    manifest[FILES] = {table: sorted(names) for table, names in sorted(files.items()) if names}
    manifest[RETIRED] = dict(sorted(graveyard.items()))


def expired(manifest: dict, now: datetime, grace_s: float) -> list[str]:
    """Retired files whose grace period is over and that no snapshot lists now."""
    live = listed_paths(manifest)
    limit = now - timedelta(seconds=grace_s)
    return [
        relative
        for relative, since in (manifest.get(RETIRED) or {}).items()
        if relative not in live and datetime.fromisoformat(since) <= limit
    ]
