"""The importance table of a run (importance by ablation, issue 14), read for the analysis.

    RUN/importance/layer=<layer>/<ablation>-<first>-<last>-<hash>.parquet
        unit, n_images, baseline_accuracy, accuracy_drop, loss_increase, class_accuracy_drop, ablation, command

A unit's **importance** is its ``accuracy_drop``: the network's top-1 accuracy on the importance images
minus its accuracy with the unit ablated (its whole output set to zero or to its mean: ``ablation``).
Positive: the network needs the unit; it can be negative. ``loss_increase`` (the mean cross-entropy
increase) is the second measure, and the finer one: one unit's accuracy drop is often a handful of images,
with many units tied at 0.

One row per (layer, ablation, unit): duplicates are resolved as in every table (repsub.analysis.tables).
A run without the table is a run like any other: `read_importance` returns None and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from repsub.analysis.tables import read_rows
from repsub.errors import RunError

ABLATIONS = ("zero", "mean")  # the `ablation` values (repsub.ablation.edit.ABLATIONS, without torch)
MEASURES = {
    "accuracy_drop": "top-1 accuracy lost when the unit is ablated (baseline minus ablated): the importance",
    "loss_increase": "mean cross-entropy gained when the unit is ablated",
}
KEYS = ["layer", "ablation", "unit"]
COLUMNS = [*KEYS, "n_images", "baseline_accuracy", "accuracy_drop", "loss_increase"]

# Columns of the per-unit frame (repsub.analysis.load.FRAME_SCHEMA), one per ablation and measure.
FRAME_COLUMNS = {
    **{f"importance_{a}": ("accuracy_drop", a) for a in ABLATIONS},
    **{f"loss_increase_{a}": ("loss_increase", a) for a in ABLATIONS},
}


@dataclass
class LayerImportance:
    """One (layer, ablation)'s importance rows, as arrays sorted by unit."""

    indices: np.ndarray  # int64: the units
    accuracy_drop: np.ndarray  # float64
    loss_increase: np.ndarray  # float64
    baseline_accuracy: np.ndarray  # float64
    n_images: np.ndarray  # int64

    def measure(self, name: str) -> np.ndarray:
        return getattr(self, name)


@dataclass
class Importance:
    table: pa.Table  # the deduplicated rows: COLUMNS (+ the source file)
    rows: dict[tuple[str, str], LayerImportance]  # (layer, ablation)
    ablations: list[str]  # in the order of ABLATIONS
    notes: list[str]  # duplicate rows left out

    def lookup(self, layers: list[str], units: list[int]) -> dict[str, pa.Array]:
        """The FRAME_COLUMNS for rows given by their (layer, unit): float64, null where a unit has no row."""
        out = {}
        for column, (measure, ablation) in FRAME_COLUMNS.items():
            values: dict[tuple[str, int], float] = {}
            for (layer, abl), rows in self.rows.items():
                if abl == ablation:
                    values.update(zip(((layer, u) for u in rows.indices.tolist()), rows.measure(measure).tolist(),
                                      strict=True))  # fmt: skip
            out[column] = pa.array(
                [values.get(key) for key in zip(layers, units, strict=True)], pa.float64(), from_pandas=False
            )
        return out


def _floats(column) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def read_importance(run, where: ds.Expression | None = None, basis: str = "unit") -> Importance | None:
    """The run's importance rows of `basis` (one per layer, ablation and target), or None when the run has no
    such table."""
    if getattr(run, "importance", None) is None:
        return None
    table, notes = read_rows(run, "importance", COLUMNS, KEYS, where, basis=basis)
    found = set(table.column("ablation").to_pylist())
    unknown = sorted(str(a) for a in found - set(ABLATIONS))
    if unknown:
        raise RunError(
            f"{run.uri}: importance rows of unknown ablation(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}"
        )
    rows: dict[tuple[str, str], LayerImportance] = {}
    layer = np.array(table.column("layer").to_pylist(), dtype=object)
    ablation = np.array(table.column("ablation").to_pylist(), dtype=object)
    for key in dict.fromkeys(zip(layer.tolist(), ablation.tolist(), strict=True)):
        part = table.filter(pa.array((layer == key[0]) & (ablation == key[1])))
        units = np.asarray(part.column("unit").to_numpy(), dtype=np.int64)
        order = np.argsort(units, kind="stable")
        rows[key] = LayerImportance(
            indices=units[order],
            accuracy_drop=_floats(part.column("accuracy_drop"))[order],
            loss_increase=_floats(part.column("loss_increase"))[order],
            baseline_accuracy=_floats(part.column("baseline_accuracy"))[order],
            n_images=np.asarray(pc.fill_null(part.column("n_images"), 0).to_numpy(), dtype=np.int64)[order],
        )
    return Importance(table, rows, [a for a in ABLATIONS if a in found], notes)
