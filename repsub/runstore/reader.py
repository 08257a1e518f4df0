"""Reading a run: its manifest checked for a schema version this repsub reads, its tables as pyarrow datasets.

The notebook's `Run` (repsub.analysis.run) and every reader of a run open it here; nothing here writes.
"""

from __future__ import annotations

import os

import pyarrow.dataset as ds

from repsub.errors import RunError
from repsub.runstore.location import RunLocation
from repsub.runstore.manifest import MANIFEST, READABLE_SCHEMA_VERSIONS
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

    def dataset(self, name: str) -> ds.Dataset | None:
        """Table `name` (repsub.runstore.tables.TABLES) as a hive-partitioned dataset; None if the run has none."""
        directory = self._path(name)
        if not self._exists(directory):
            return None
        return ds.dataset(
            directory,
            filesystem=self.fs,
            format="parquet",
            schema=TABLES[name].full_schema(),
            partitioning=ds.partitioning(LAYER_PARTITION, flavor="hive"),
        )

    def datasets(self) -> dict[str, ds.Dataset | None]:
        return {name: self.dataset(name) for name in TABLES}
