"""Reading a run for analysis: its tables with one rule for duplicate rows (repsub.analysis.tables), joined
into one frame of units.

**The frame** (`unit_frame`) has one row per units row (layer, method, unit) joined with the unit's
selectivity row and its importance (one column per ablation and measure), then one row (method null) per
unit that only the selectivity or importance table has: FRAME_SCHEMA. `depth` and `read` come from the run's
catalog (repsub.analysis.layers), `status` from the units table (derived for version 1 runs by
repsub.runstore.tables.units_status) and `excluded` says why a row is left out of the RS statistics
(repsub.analysis.exclusion; null when it enters them). The importance columns are null for a run without
the importance table (repsub.analysis.importance).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from repsub.analysis.coverage import EXPECTED_METHODS as METHODS
from repsub.analysis.coverage import Coverage, check_coverage
from repsub.analysis.exclusion import exclusion_reasons
from repsub.analysis.importance import FRAME_COLUMNS as IMPORTANCE_COLUMNS
from repsub.analysis.importance import Importance, read_importance
from repsub.analysis.interpretability import Interpretability, read_interpretability
from repsub.analysis.layers import LayerInfo, catalog_layers, run_layers
from repsub.analysis.tables import FILENAME, read_rows
from repsub.errors import UsageError
from repsub.runstore.tables import UNIT_BASIS, units_status

__all__ = ["FILENAME", "FRAME_SCHEMA", "RunData", "load_run_data", "read_rows", "unit_frame"]

UNITS_COLUMNS = ["layer", "method", "unit", "activation", "rs", "rs_ties", "status", "objective_start",
                 "objective_final", "seed", "steps"]  # fmt: skip
SELECTIVITY_COLUMNS = ["layer", "unit", "selectivity", "dead", "top_class", "n_images"]

FRAME_SCHEMA = pa.schema([
    ("layer", pa.string()),
    ("depth", pa.int32()),  # position in the model's catalog; null for a layer the catalog lacks
    ("read", pa.string()),  # how the layer is read: relu, block, logits, module (repsub.models.READS)
    ("basis", pa.string()),  # the targets' basis: "unit" (every row of runs of schema versions 1 and 2)
    ("unit", pa.int32()),  # the target: a unit, or a direction of the basis
    ("method", pa.string()),  # am, iam; null for a unit with selectivity only
    ("status", pa.string()),  # ok, no_response, nonfinite (repsub.runstore.tables.UNIT_STATUSES)
    ("excluded", pa.string()),  # why the row is left out of the RS statistics; null: it enters them
    ("rs", pa.float64()),
    ("rs_ties", pa.float64()),
    ("activation", pa.float32()),
    ("selectivity", pa.float64()),
    ("dead", pa.bool_()),
    ("top_class", pa.int32()),
    ("n_images", pa.int64()),
    # accuracy drop (importance) and loss increase with the unit ablated, per ablation; null without a row
    *((name, pa.float64()) for name in IMPORTANCE_COLUMNS),
    ("objective_start", pa.float32()),
    ("objective_final", pa.float32()),
    ("seed", pa.int64()),
    ("steps", pa.int32()),
])  # fmt: skip
OPTIONAL_COLUMNS = {
    "class_means": ("selectivity", pa.list_(pa.float64())),
    "layer_activations": ("units", pa.list_(pa.float32())),
}


@dataclass
class MethodRows:
    """One (layer, method)'s units rows joined with selectivity, as arrays sorted by unit."""

    indices: np.ndarray  # int64: the units
    selectivity: np.ndarray  # float64, NaN without a selectivity row
    has_selectivity: np.ndarray  # bool
    dead: np.ndarray  # bool (False without a selectivity row)
    rs: np.ndarray  # float64
    activation: np.ndarray  # float64
    status: np.ndarray  # object: str
    reason: np.ndarray  # object: a key of exclusion.REASONS, or None (the row enters the RS statistics)

    @property
    def included(self) -> np.ndarray:
        return np.array([r is None for r in self.reason], dtype=bool)


@dataclass
class LayerSelectivity:
    indices: np.ndarray  # int64, sorted: the units
    selectivity: np.ndarray  # float64, NaN for dead units
    dead: np.ndarray  # bool

    @property
    def alive_values(self) -> np.ndarray:
        """Selectivity of the units that are alive and have a finite value."""
        return self.selectivity[~self.dead & np.isfinite(self.selectivity)]


@dataclass
class RunData:
    """What the statistics, figures and page read: the frame, per-layer arrays, layers and coverage."""

    run: object  # repsub.analysis.run.Run
    catalog: list[LayerInfo]  # the model's layers, whether or not the run has them
    catalog_source: str  # 'manifest', 'model registry' or 'none'
    layers: list[LayerInfo]  # the layers with rows, in depth order
    frame: pa.Table  # FRAME_SCHEMA
    selectivity: dict[str, LayerSelectivity]
    rows: dict[tuple[str, str], MethodRows]  # (layer, method)
    methods: list[str]
    coverage: Coverage
    kept_files: dict[tuple[str, str, int], str] = field(
        default_factory=dict
    )  # units keys that had duplicates
    importance: Importance | None = None  # the importance table (repsub.analysis.importance); None without
    # the interpretability index (repsub.analysis.interpretability); None without
    interpretability: Interpretability | None = None
    basis: str = UNIT_BASIS  # whose targets the rows are: "unit", or a basis's name

    def layer(self, name: str) -> LayerInfo:
        return next(info for info in self.layers if info.name == name)

    def included(self, layer: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(units, selectivity, rs) of the rows that enter the RS statistics."""
        rows = self.rows.get((layer, method))
        if rows is None:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty, empty
        keep = rows.included
        return rows.indices[keep], rows.selectivity[keep], rows.rs[keep]


def _order_methods(found) -> list[str]:
    return [m for m in METHODS if m in found] + sorted(m for m in found if m not in METHODS)


def _floats(column) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _bools(column) -> np.ndarray:
    return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _layer_filter(layers: list[str] | None) -> ds.Expression | None:
    return None if layers is None else ds.field("layer").isin(list(layers))


def _empty(columns: list[str]) -> pa.Table:
    return pa.table({name: pa.array([], FRAME_SCHEMA.field(name).type) for name in columns})


def _keys(table: pa.Table) -> zip:
    """(layer, unit) of each row."""
    return zip(table.column("layer").to_pylist(), table.column("unit").to_pylist(), strict=True)


def join_frame(
    units: pa.Table | None,
    selectivity: pa.Table | None,
    layers: list[LayerInfo],
    extra: dict[str, pa.ChunkedArray] | None = None,
    importance: Importance | None = None,
    basis: str = "unit",
) -> pa.Table:
    """The frame (FRAME_SCHEMA, plus `extra` columns already aligned per units row / selectivity row) from
    deduplicated tables, sorted by layer depth, method and unit."""
    extra = extra or {}
    units = units if units is not None else _empty(UNITS_COLUMNS)
    sel = selectivity if selectivity is not None else _empty(SELECTIVITY_COLUMNS)
    sel_row = {key: i for i, key in enumerate(_keys(sel))}
    matched = [sel_row.get(key) for key in _keys(units)]  # each units row's selectivity row, or None
    used = set(matched)
    sel_only = [i for i in range(sel.num_rows) if i not in used]
    known = set(_keys(units)) | set(sel_row)
    importance_only = (
        [] if importance is None else [k for k in dict.fromkeys(_keys(importance.table)) if k not in known]
    )
    take_matched, take_only = pa.array(matched, pa.int64()), pa.array(sel_only, pa.int64())
    n_only = len(sel_only) + len(importance_only)

    def from_units(column: pa.ChunkedArray | pa.Array, type_: pa.DataType) -> pa.ChunkedArray:
        column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column], type_)
        return pa.chunked_array([*column.cast(type_).chunks, pa.nulls(n_only, type_)], type_)

    def from_selectivity(column: pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray:
        column = column.cast(type_)
        taken = [*column.take(take_matched).chunks, *column.take(take_only).chunks]
        return pa.chunked_array([*taken, pa.nulls(len(importance_only), type_)], type_)

    has_sel = np.array([i is not None for i in matched], dtype=bool)
    status = units_status(units) if units.num_rows else pa.array([], pa.string())
    sel_taken = sel.take(take_matched)
    reasons = exclusion_reasons(
        has_sel,
        _bools(sel_taken.column("dead")),
        _floats(sel_taken.column("selectivity")),
        np.asarray(status.to_pylist(), dtype=object),
        _floats(units.column("rs")),
    )
    position = {info.name: i for i, info in enumerate(layers)}
    info_of = {info.name: info for info in layers}
    layer_names = (
        units.column("layer").to_pylist()
        + sel.column("layer").take(take_only).to_pylist()
        + [layer for layer, _ in importance_only]
    )
    unit_numbers = (
        units.column("unit").to_pylist()
        + sel.column("unit").take(take_only).to_pylist()
        + [unit for _, unit in importance_only]
    )
    columns: dict[str, pa.ChunkedArray | pa.Array] = {
        "layer": pa.array(layer_names, pa.string()),
        "depth": pa.array([info_of[n].depth if n in info_of else None for n in layer_names], pa.int32()),
        "read": pa.array([info_of[n].read if n in info_of else None for n in layer_names], pa.string()),
        "basis": pa.array([basis] * len(layer_names), pa.string()),
        "unit": pa.array(unit_numbers, pa.int32()),
        "status": from_units(status, pa.string()),
        "excluded": from_units(pa.array(reasons.tolist(), pa.string()), pa.string()),
    }
    if importance is not None:
        columns.update(importance.lookup(layer_names, unit_numbers))
    else:
        columns.update({name: pa.nulls(len(layer_names), pa.float64()) for name in IMPORTANCE_COLUMNS})
    for name in FRAME_SCHEMA.names:
        if name in columns:
            continue
        type_ = FRAME_SCHEMA.field(name).type
        columns[name] = (
            from_selectivity(sel.column(name), type_)
            if name in SELECTIVITY_COLUMNS
            else from_units(units.column(name), type_)
        )
    schema = FRAME_SCHEMA
    for name, column in extra.items():
        origin, type_ = OPTIONAL_COLUMNS[name]
        columns[name] = (
            from_selectivity(column, type_) if origin == "selectivity" else from_units(column, type_)
        )
        schema = schema.append(pa.field(name, type_))
    frame = pa.table([columns[name] for name in schema.names], schema=schema)
    method_rank = {m: i for i, m in enumerate(_order_methods(set(units.column("method").to_pylist())))}
    order = np.lexsort([
        np.asarray(unit_numbers, dtype=np.int64),
        np.array([method_rank.get(m, len(method_rank)) for m in frame.column("method").to_pylist()]),
        np.array([position.get(n, len(position)) for n in layer_names]),
    ])  # fmt: skip
    return frame.take(pa.array(order, pa.int64()))


def unit_frame(
    run,
    layers: list[str] | None = None,
    methods: list[str] | None = None,
    *,
    class_means: bool = False,
    layer_activations: bool = False,
    basis: str = "unit",
) -> pa.Table:
    """The joined per-unit frame of a run (module doc), for some layers and methods or all of them, for the
    targets of one basis (the units by default).

    `class_means` and `layer_activations` add those list columns (large: 1,000 class means or 4,096
    activations per unit for VGG16's fc layers)."""
    catalog, _ = catalog_layers(run.manifest)
    check_names(run, catalog, layers, methods)
    where = _layer_filter(layers)
    if methods is not None:
        by_method = ds.field("method").isin(list(methods))
        unit_where = by_method if where is None else where & by_method
    else:
        unit_where = where
    units_columns = UNITS_COLUMNS + (["layer_activations"] if layer_activations else [])
    sel_columns = SELECTIVITY_COLUMNS + (["class_means"] if class_means else [])
    units, unit_notes = read_rows(
        run, "units", units_columns, ["layer", "method", "unit"], unit_where, basis=basis
    )
    sel, sel_notes = read_rows(run, "selectivity", sel_columns, ["layer", "unit"], where, basis=basis)
    importance = read_importance(run, where, basis=basis)
    # A notebook shows warnings: overlapping files are worth knowing about.
    for note in sel_notes + unit_notes + (importance.notes if importance else []):
        warnings.warn(f"{run.uri}: {note}", stacklevel=3)
    extra = {}
    for name, wanted, table in (
        ("class_means", class_means, sel),
        ("layer_activations", layer_activations, units),
    ):
        if wanted:
            empty = pa.chunked_array([], OPTIONAL_COLUMNS[name][1])
            extra[name] = table.column(name) if table is not None else empty
    present = _present_layers(units, sel, importance.table if importance else None)
    frame = join_frame(units, sel, run_layers(catalog, present), extra, importance, basis)
    if methods is not None:  # rows of the methods asked for (not the selectivity- or importance-only rows)
        frame = frame.filter(pc.is_valid(frame.column("method")))
    return frame


def _present_layers(*tables: pa.Table | None) -> list[str]:
    names: list[str] = []
    for table in tables:
        if table is not None:
            names += [n for n in dict.fromkeys(table.column("layer").to_pylist()) if n not in names]
    return names


def _partition_layers(dataset: ds.Dataset | None) -> list[str]:
    """The layers a table has files for, from the partition directories (no file is read)."""
    if dataset is None:
        return []
    found = []
    for path in dataset.files:
        for part in path.split("/"):
            if part.startswith("layer=") and part[6:] not in found:
                found.append(part[6:])
    return found


def check_names(run, catalog: list[LayerInfo], layers, methods) -> None:
    if layers is not None:
        tables = (run.selectivity, run.units, getattr(run, "importance", None))
        valid = list(
            dict.fromkeys([*(i.name for i in catalog), *(n for t in tables for n in _partition_layers(t))])
        )
        unknown = [name for name in layers if name not in valid]
        if unknown:
            raise UsageError(f"{run.uri}: unknown layer(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if methods is not None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise UsageError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")


def load_run_data(run, basis: str = UNIT_BASIS) -> RunData:
    """Read what the statistics, figures and page need (not the images) and what the run lacks, for the
    targets of one basis (the units by default; the interpretability index is the units' only)."""
    catalog, source = catalog_layers(run.manifest)
    units, unit_notes = read_rows(run, "units", UNITS_COLUMNS, ["layer", "method", "unit"], basis=basis)
    sel, sel_notes = read_rows(run, "selectivity", SELECTIVITY_COLUMNS, ["layer", "unit"], basis=basis)
    importance = read_importance(run, basis=basis)
    importance_table = importance.table if importance else None
    layers = run_layers(catalog, _present_layers(sel, units, importance_table))
    frame = join_frame(units, sel, layers, importance=importance, basis=basis)

    selectivity: dict[str, LayerSelectivity] = {}
    if sel is not None:
        for layer in _present_layers(sel):
            part = sel.filter(pc.equal(sel.column("layer"), layer))
            order = np.argsort(np.asarray(part.column("unit").to_numpy(), dtype=np.int64), kind="stable")
            selectivity[layer] = LayerSelectivity(
                indices=np.asarray(part.column("unit").to_numpy(), dtype=np.int64)[order],
                selectivity=_floats(part.column("selectivity"))[order],
                dead=_bools(part.column("dead"))[order],
            )
    rows = _method_rows(frame)
    methods = _order_methods({m for _, m in rows})
    kept_files = _kept_files(units, unit_notes)
    model = (run.manifest.get("model") or {}).get("model")
    interpretability = read_interpretability(run) if basis == UNIT_BASIS else None
    notes = sel_notes + unit_notes + (importance.notes if importance else [])
    notes += interpretability.notes if interpretability else []
    if source == "model registry":
        notes.append("the manifest has no layer catalog (a run written before it did): layers read from "
                     "this repsub's model registry")  # fmt: skip
    coverage = check_coverage(
        model,
        catalog,
        {layer: s.indices for layer, s in selectivity.items()},
        {key: r.indices for key, r in rows.items()},
        sel is not None,
        units is not None,
        notes,
        importance_layers=set(_present_layers(importance_table)),
    )
    return RunData(run, catalog, source, layers, frame, selectivity, rows, methods, coverage, kept_files,
                   importance, interpretability, basis)  # fmt: skip


def _method_rows(frame: pa.Table) -> dict[tuple[str, str], MethodRows]:
    with_method = frame.filter(pc.is_valid(frame.column("method")))
    layer = np.array(with_method.column("layer").to_pylist(), dtype=object)
    method = np.array(with_method.column("method").to_pylist(), dtype=object)
    cols = {
        "indices": np.asarray(with_method.column("unit").to_numpy(zero_copy_only=False), dtype=np.int64),
        "selectivity": _floats(with_method.column("selectivity")),
        "has_selectivity": _bools(
            pc.or_(pc.is_valid(with_method.column("dead")), pc.is_valid(with_method.column("selectivity")))
        ),
        "dead": _bools(with_method.column("dead")),
        "rs": _floats(with_method.column("rs")),
        "activation": _floats(with_method.column("activation")),
        "status": np.array(with_method.column("status").to_pylist(), dtype=object),
        "reason": np.array(with_method.column("excluded").to_pylist(), dtype=object),
    }
    rows = {}
    for key in dict.fromkeys(zip(layer.tolist(), method.tolist(), strict=True)):
        mask = (layer == key[0]) & (method == key[1])
        rows[key] = MethodRows(**{name: values[mask] for name, values in cols.items()})
    return rows


def _kept_files(units: pa.Table | None, notes: list[str]) -> dict[tuple[str, str, int], str]:
    """The source file of every units row, when the table had duplicates (else every row is the only one)."""
    if units is None or not notes:
        return {}
    keys = zip(units.column("layer").to_pylist(), units.column("method").to_pylist(),
               units.column("unit").to_pylist(), strict=True)  # fmt: skip
    return dict(zip(keys, units.column(FILENAME).to_pylist(), strict=True))
