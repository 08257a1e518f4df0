"""Reading a run: its manifest checked for a schema version this repsub reads, its tables as pyarrow datasets.

The notebook's `Run` (repsub.analysis.run) and every reader of a run open it here; nothing here writes.
The manifest is read once, and with it the run's committed files (repsub.runstore.snapshot): the datasets
hold exactly those, so a reader sees one committed state of the run while a writer works on it.
"""

from __future__ import annotations

import os

import pyarrow.dataset as ds

from repsub.errors import RunError
from repsub.runstore.location import RunLocation
from repsub.runstore.manifest import MANIFEST, READABLE_SCHEMA_VERSIONS
from repsub.runstore.snapshot import listed
from repsub.runstore.tables import LAYER_PARTITION, TABLES


class RunReader(RunLocation):
    """A run location holding a run (a manifest of a readable schema version), read."""

    def __init__(self, uri: str | os.PathLike):
        super().__init__(uri)
        manifest = self.read_manifest()
        if manifest is None:
            raise RunError(f"{self.uri} holds no run (no {MANIFEST})")
        if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise RunError(
                f"{self.uri} holds a run of schema version {manifest.get('schema_version')}; this repsub "
                f"reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
            )
        self.manifest = manifest

    def files(self, name: str) -> list[str] | None:
        """The paths (within `self.fs`) of table `name`'s files in the snapshot read with the manifest; None
        for a run without a file list (read by listing its directories)."""
        files = listed(self.manifest)
        if files is None:
            return None
        return [self._path(name, inside) for inside in files.get(name, [])]

    def dataset(self, name: str) -> ds.Dataset | None:
        """Table `name` (repsub.runstore.tables.TABLES) as a hive-partitioned dataset of the snapshot's files;
        None if the run has none."""
        directory = self._path(name)
        source = self.files(name)
        if not self._exists(directory) or source == []:  # a table directory removed by hand: none either
            return None
        source = source or directory  # a run without a file list: its directory, as listed now
        return ds.dataset(
            source,
            filesystem=self.fs,
            format="parquet",
            schema=TABLES[name].full_schema(),
            partitioning=ds.partitioning(LAYER_PARTITION, flavor="hive"),
            partition_base_dir=directory,
        )

    def datasets(self) -> dict[str, ds.Dataset | None]:
        return {name: self.dataset(name) for name in TABLES}
