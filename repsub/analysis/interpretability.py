"""The interpretability table of a run (`repsub interpretability`, issue 19), read for the analysis.

    RUN/interpretability/layer=<layer>/<similarity>-<first>-<last>-<hash>.parquet
        unit, similarity, variant, index, trials, seed, command

One row per (layer, similarity, variant, unit): duplicates are resolved as in every table
(repsub.analysis.tables). A run without the table reads as None and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from repsub.analysis.tables import read_rows

KEYS = ["layer", "similarity", "variant", "unit"]
COLUMNS = [*KEYS, "index"]


@dataclass
class LayerIndex:
    """One (layer, similarity, variant)'s index rows, as arrays sorted by unit."""

    indices: np.ndarray  # int64: the units
    index: np.ndarray  # float64: the 2AFC index


@dataclass
class Interpretability:
    table: pa.Table  # the deduplicated rows: COLUMNS (+ the source file)
    rows: dict[tuple[str, str, str], LayerIndex]  # (layer, similarity, variant)
    kinds: list[tuple[str, str]]  # (similarity, variant) present, in first-seen order
    notes: list[str]  # duplicate rows left out

    def lookup(self, layer: str, similarity: str, variant: str, units: list[int]) -> list[float | None]:
        """The index of each of `units` of a layer (None where a unit has no row)."""
        rows = self.rows.get((layer, similarity, variant))
        if rows is None:
            return [None] * len(units)
        found = dict(zip(rows.indices.tolist(), rows.index.tolist(), strict=True))
        return [found.get(unit) for unit in units]


def kind_label(similarity: str, variant: str) -> str:
    """'labels' for the extremal variant (top vs bottom), 'labels, central' for another."""
    return similarity if variant == "extremal" else f"{similarity}, {variant}"


def read_interpretability(run, where: ds.Expression | None = None) -> Interpretability | None:
    """The run's index rows, or None when the run has no interpretability table."""
    if getattr(run, "interpretability", None) is None:
        return None
    table, notes = read_rows(run, "interpretability", COLUMNS, KEYS, where)
    keys = list(zip(*(table.column(k).to_pylist() for k in ("layer", "similarity", "variant")), strict=True))
    units = np.asarray(table.column("unit").to_numpy(), dtype=np.int64)
    values = np.asarray(table.column("index").to_numpy(zero_copy_only=False), dtype=np.float64)
    codes = {key: code for code, key in enumerate(dict.fromkeys(keys))}
    key_codes = np.array([codes[key] for key in keys], dtype=np.int64)
    rows = {}
    for key, code in codes.items():
        mask = key_codes == code
        order = np.argsort(units[mask], kind="stable")
        rows[key] = LayerIndex(units[mask][order], values[mask][order])
    kinds = list(dict.fromkeys((similarity, variant) for _, similarity, variant in rows))
    return Interpretability(table, rows, kinds, notes)
