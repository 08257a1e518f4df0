"""A run as a notebook reads it: `repsub.open_run(RUN)`.

    run = repsub.open_run("runs/demo")
    df = run.to_pandas()                  # one row per unit and method: RS, selectivity, status, depth...
    run.image("conv3", 17, "iam")         # the unit's IAM image (PIL)
    run.stats().to_pandas()               # the report's statistics table
    run.importance_stats().to_pandas()    # importance by ablation against RS and selectivity (if measured)
    run.interpretability_stats()          # the interpretability index per layer, against RS and selectivity
    run.exemplars("conv3", 17)            # the unit's top and bottom images: activation, label, thumbnail

The tables stay available as pyarrow datasets (`run.units`, `run.selectivity`, `run.activations`,
`run.importance`, `run.exemplar_rows`, `run.images`) for anything else (filters, streaming), and their files as
`run.files("units")` (duckdb, polars). They are the files of the snapshot read when the run was opened
(repsub.runstore.snapshot): open the run again to see what a writer committed since.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
from PIL import Image

from repsub.errors import RunError
from repsub.runstore.reader import RunReader
from repsub.runstore.tables import TABLES

# A table whose attribute is not its name (`exemplars` is the method that reads it).
ATTRIBUTES = {"exemplars": "exemplar_rows"}


@dataclass
class Run:
    """A run's tables as pyarrow datasets (None where the run has no such table) and its manifest."""

    uri: str
    manifest: dict
    selectivity: ds.Dataset | None
    units: ds.Dataset | None
    activations: ds.Dataset | None = None  # per-image activations (selectivity --save-activations)
    importance: ds.Dataset | None = None  # importance by ablation (repsub importance)
    exemplar_rows: ds.Dataset | None = None  # the `exemplars` table (selectivity --exemplars)
    images: ds.Dataset | None = None  # the exemplars' thumbnails
    interpretability: ds.Dataset | None = (
        None  # the 2AFC index per unit and similarity (repsub interpretability)
    )
    quantiles: ds.Dataset | None = None  # each unit's activation quantiles (selectivity --quantile-k)
    bands: ds.Dataset | None = None  # per unit and band of its activation, a sample of the band's images

    bases: ds.Dataset | None = None  # the fitted bases, one row each (repsub basis fit)

    def _dataset(self, name: str) -> ds.Dataset | None:
        return getattr(self, ATTRIBUTES.get(name, name))

    def files(self, name: str) -> list[str]:
        """The files of table `name` in the snapshot this Run read (local paths or s3:// URIs), for duckdb
        and polars: `duckdb.sql(f"... FROM read_parquet({run.files('units')}, hive_partitioning=true)")`.
        Empty for a table the run does not have."""
        dataset = getattr(self, name)
        if dataset is None:
            return []
        prefix = "s3://" if self.uri.startswith("s3://") else ""
        return [prefix + path for path in dataset.files]

    def table(self, name: str, **to_table_kwargs) -> pa.Table | None:
        dataset = self._dataset(name)
        return None if dataset is None else dataset.to_table(**to_table_kwargs)

    @property
    def layers(self) -> list[dict]:
        """The model's layers in depth order: {name, depth, read, units, kind} (from the manifest's catalog)."""
        from repsub.analysis.layers import catalog_layers

        return [
            {"name": i.name, "depth": i.depth, "read": i.read, "units": i.n_units, "kind": i.kind}
            for i in catalog_layers(self.manifest)[0]
        ]

    def frame(
        self,
        layers: list[str] | None = None,
        methods: list[str] | None = None,
        *,
        class_means: bool = False,
        layer_activations: bool = False,
        basis: str = "unit",
    ) -> pa.Table:
        """One row per unit and method, joined with the unit's selectivity (repsub.analysis.FRAME_SCHEMA):
        layer, depth, read, basis, unit, method, status, excluded (why the row is left out of the RS statistics,
        null if it enters them), rs, rs_ties, activation, selectivity, dead, top_class, n_images,
        importance_zero, importance_mean (accuracy drop with the unit ablated, per ablation),
        loss_increase_zero, loss_increase_mean, objectives, seed, steps. Units with selectivity or importance
        only have a row with method null (unless `methods` is given); the importance columns are null without
        an importance row. `class_means` / `layer_activations` add those list columns (large for wide
        layers). `basis`: whose targets the rows are (a basis's directions in place of the units: their
        `unit` is the direction's index); the units by default, every row of runs before bases."""
        from repsub.analysis.load import unit_frame

        return unit_frame(
            self, layers, methods, class_means=class_means, layer_activations=layer_activations, basis=basis
        )

    def to_pandas(self, layers: list[str] | None = None, methods: list[str] | None = None, **columns):
        """`frame(...)` as a pandas DataFrame."""
        return self.frame(layers, methods, **columns).to_pandas()

    def to_polars(self, layers: list[str] | None = None, methods: list[str] | None = None, **columns):
        """`frame(...)` as a polars DataFrame."""
        import polars as pl

        return pl.from_arrow(self.frame(layers, methods, **columns))

    def image(self, layer: str, unit: int, method: str = "iam") -> Image.Image:
        """The stored AM or IAM image of one unit (uint8 RGB, as optimized and recorded)."""
        from repsub.analysis.layers import catalog_layers
        from repsub.analysis.load import check_names, read_rows

        check_names(self, catalog_layers(self.manifest)[0], [layer], [method])
        where = (
            (ds.field("layer") == layer) & (ds.field("method") == method) & (ds.field("unit") == int(unit))
        )
        rows, _ = read_rows(
            self, "units", ["layer", "method", "unit", "image"], ["layer", "method", "unit"], where
        )
        if rows is None or rows.num_rows == 0 or rows.column("image")[0].as_py() is None:
            raise RunError(f"{self.uri} has no {method} image of {layer} unit {unit}")
        image = Image.open(io.BytesIO(rows.column("image")[0].as_py()))
        return image.convert("RGB")

    def exemplars(self, layer: str, unit: int, side: str | None = None, images: bool = True):
        """One unit's exemplars as a pandas DataFrame, top side first, best first: side, rank, image_index,
        label, class (its name, where the manifest records the data's classes), activation and, with `images`,
        image (the thumbnail as a PIL image; None where the run has none)."""
        from repsub.analysis.exemplars import unit_exemplars

        return unit_exemplars(self, layer, int(unit), side, images)

    def stats(self, **options) -> pa.Table:
        """The report's statistics table (repsub.analysis.stats), with the report's default options unless
        given: high, low, seed, resamples, confidence."""
        from repsub.analysis import StatsOptions, compute_stats, load_run_data

        return compute_stats(load_run_data(self), StatsOptions(**options))

    def importance_stats(self, **options) -> pa.Table:
        """The report's importance statistics (repsub.analysis.importance_stats; importance_stats.parquet):
        one row per layer, ablation, measure (accuracy_drop, loss_increase) and what importance is
        correlated with (`against`: rs_am, rs_iam, selectivity); empty for a run without importance.
        Options as `stats`: seed, resamples, confidence."""
        from repsub.analysis import StatsOptions, load_run_data
        from repsub.analysis.importance_stats import compute_importance_stats

        return compute_importance_stats(load_run_data(self), StatsOptions(**options))

    def interpretability_stats(self, **options) -> pa.Table:
        """The report's interpretability statistics (repsub.analysis.interpretability_stats;
        interpretability_stats.parquet): one row per layer, similarity, variant and what the index is
        correlated with (`against`: rs_am, rs_iam, selectivity), with the layer's mean index; empty for a run
        without `repsub interpretability`. Options as `stats`: seed, resamples, confidence."""
        from repsub.analysis import StatsOptions, load_run_data
        from repsub.analysis.interpretability_stats import compute_interpretability_stats

        return compute_interpretability_stats(load_run_data(self), StatsOptions(**options))

    def __repr__(self) -> str:
        model = (self.manifest.get("model") or {}).get("model", "?")
        tables = [name for name in TABLES if self._dataset(name) is not None]
        return f"Run({self.uri!r}, model {model}, tables {', '.join(tables) or 'none'})"


def open_run(uri: str | os.PathLike) -> Run:
    """Open a run (local directory or URI) and check its schema version.

    >>> run = repsub.open_run("runs/demo")
    >>> run.to_pandas()
    """
    reader = RunReader(uri)
    datasets = {ATTRIBUTES.get(name, name): dataset for name, dataset in reader.datasets().items()}
    return Run(uri=reader.uri, manifest=reader.manifest, **datasets)
