"""The report's statistics: a run's selectivity and units tables joined by (layer, unit), per layer and method.

Definitions (one row per layer and method; a layer with no RS rows gets one row with method null):

- ``units``, ``dead``: rows of the layer's selectivity table, and those marked dead (NaN selectivity).
- ``mean_selectivity``, ``median_selectivity``, ``n_high``, ``n_low``: over the layer's selectivity
  values that are not NaN (dead units excluded); high means selectivity >= ``high``, low <= ``low``.
- ``units_rs``, ``mean_rs``, ``median_rs``: the method's RS rows of the layer (NaN RS ignored).
- Spearman rho of RS against selectivity (scipy), over the units with an RS row and a selectivity row,
  alive, both values finite (``n_spearman`` of them). The others with an RS row are counted as
  ``excluded_dead``, ``excluded_nan`` and ``unmatched`` (no selectivity row), so that
  ``units_rs == n_spearman + excluded_dead + excluded_nan + unmatched``.
- ``rho_ci_low``, ``rho_ci_high``: percentile bootstrap interval: units resampled with replacement,
  ``resamples`` times, from ``bootstrap_rng(seed, layer, method)``; resamples where a column is
  constant (rho undefined) are dropped and the rest counted in ``bootstrap_resamples``.
- ``mean_rs_high``, ``mean_rs_low``: mean RS of the Spearman units of high / low selectivity.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from .errors import RepsubError, RunError
from .models import catalog
from .optimize import METHODS
from .store import Run, open_run

HIGH_SELECTIVITY = 0.6  # "high-selectivity unit": selectivity >= this (post-ReLU selectivity is in [0, 1])
LOW_SELECTIVITY = 0.2  # "low-selectivity unit": selectivity <= this
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95  # of the bootstrap interval
DEFAULT_SEED = 0
MIN_PAIRS = 3  # fewer pairs: no Spearman rho (NaN)
_BOOTSTRAP_CHUNK = 100  # resamples ranked together (bounds memory for 4096-unit layers)

STATS_SCHEMA = pa.schema([
    ("layer", pa.string()),
    ("depth", pa.int32()),  # position in the model's catalog (0 = first layer); null if not in it
    ("after_relu", pa.bool_()),  # False for logits (selectivity unbounded); null if unknown
    ("method", pa.string()),
    ("units", pa.int64()),
    ("dead", pa.int64()),
    ("mean_selectivity", pa.float64()),
    ("median_selectivity", pa.float64()),
    ("n_high", pa.int64()),
    ("n_low", pa.int64()),
    ("units_rs", pa.int64()),
    ("mean_rs", pa.float64()),
    ("median_rs", pa.float64()),
    ("n_spearman", pa.int64()),
    ("excluded_dead", pa.int64()),
    ("excluded_nan", pa.int64()),
    ("unmatched", pa.int64()),
    ("spearman_rho", pa.float64()),
    ("spearman_p", pa.float64()),
    ("rho_ci_low", pa.float64()),
    ("rho_ci_high", pa.float64()),
    ("bootstrap_resamples", pa.int64()),
    ("mean_rs_high", pa.float64()),
    ("mean_rs_low", pa.float64()),
])  # fmt: skip


@dataclass(frozen=True)
class StatsOptions:
    """Thresholds and bootstrap settings of a report."""

    high: float = HIGH_SELECTIVITY
    low: float = LOW_SELECTIVITY
    seed: int = DEFAULT_SEED
    resamples: int = BOOTSTRAP_RESAMPLES
    confidence: float = CONFIDENCE

    def validate(self) -> None:
        from .errors import UsageError

        if not self.low <= self.high:
            raise UsageError(f"--low ({self.low}) must not exceed --high ({self.high})")
        if self.resamples < 1:
            raise UsageError(f"--resamples must be at least 1, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise UsageError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass
class LayerInfo:
    name: str
    depth: int | None  # catalog position
    after_relu: bool | None
    catalog_units: int | None


@dataclass
class LayerSelectivity:
    units: np.ndarray  # int64, sorted
    selectivity: np.ndarray  # float64, NaN for dead units
    dead: np.ndarray  # bool


@dataclass
class MethodRS:
    units: np.ndarray  # int64, sorted, unique
    rs: np.ndarray  # float64
    activation: np.ndarray  # float64, the unit's own activation on its image


@dataclass
class Coverage:
    """What the run lacks compared with the model's catalog (all layers, every unit, AM and IAM)."""

    model: str | None
    missing_layers: list[str] = field(default_factory=list)  # catalog layers without any row
    missing_units: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # table -> layer -> units
    notes: list[str] = field(default_factory=list)  # everything above and other remarks, as sentences

    @property
    def complete(self) -> bool:
        return not self.missing_layers and not any(self.missing_units.values())


@dataclass
class RunData:
    """A run's per-layer arrays for the report, in layer depth order."""

    run: Run
    layers: list[LayerInfo]  # the layers that have rows in either table
    selectivity: dict[str, LayerSelectivity]
    rs: dict[tuple[str, str], MethodRS]  # (layer, method) -> RS
    methods: list[str]
    coverage: Coverage

    def layer(self, name: str) -> LayerInfo:
        return next(info for info in self.layers if info.name == name)

    def pairs(self, layer: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(units, selectivity, rs) of the units that enter the Spearman computation."""
        sel, rs = self.selectivity.get(layer), self.rs.get((layer, method))
        if sel is None or rs is None:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty, empty
        units, in_sel, in_rs = np.intersect1d(sel.units, rs.units, assume_unique=True, return_indices=True)
        x, y = sel.selectivity[in_sel], rs.rs[in_rs]
        keep = ~sel.dead[in_sel] & np.isfinite(x) & np.isfinite(y)
        return units[keep], x[keep], y[keep]


def open_report_run(uri) -> Run:
    """open_run, with an unreadable manifest also reported as a RunError naming the path."""
    try:
        return open_run(uri)
    except json.JSONDecodeError as err:
        raise RunError(f"{uri}: manifest.json is not valid JSON ({err})") from err


def _read(run: Run, name: str, columns: list[str]) -> pa.Table | None:
    try:
        return run.table(name, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise RunError(f"{run.uri}: cannot read the {name} table: {err}") from err


def _model_layers(manifest: dict) -> tuple[str | None, list[LayerInfo]]:
    identity = manifest.get("model") or {}
    name = identity.get("model")
    if not name:
        return None, []
    try:
        layers = catalog(name, identity.get("num_classes"))
    except (RepsubError, RuntimeError):  # a model this repsub does not know: no catalog to compare with
        return name, []
    return name, [LayerInfo(layer.name, i, layer.after_relu, layer.units) for i, layer in enumerate(layers)]


def load_run_data(run: Run) -> RunData:
    """Read the columns the statistics need (not the images) and what the run lacks."""
    model, known = _model_layers(run.manifest)
    sel = _read(run, "selectivity", ["layer", "unit", "selectivity", "dead"])
    units = _read(run, "units", ["layer", "unit", "method", "rs", "activation"])
    notes: list[str] = []
    by_layer: dict[str, LayerSelectivity] = {}
    if sel is not None:
        for layer in _distinct(sel, "layer"):
            part = sel.filter(pc.equal(sel.column("layer"), layer))
            order = np.argsort(np.asarray(part.column("unit").to_numpy(), dtype=np.int64), kind="stable")
            by_layer[layer] = LayerSelectivity(
                units=np.asarray(part.column("unit").to_numpy(), dtype=np.int64)[order],
                selectivity=_floats(part.column("selectivity"))[order],
                dead=np.asarray(part.column("dead").fill_null(False).to_numpy(zero_copy_only=False))[order],
            )
    rs: dict[tuple[str, str], MethodRS] = {}
    methods: list[str] = []
    if units is not None and units.num_rows:
        found = _distinct(units, "method")
        methods = [m for m in METHODS if m in found] + sorted(m for m in found if m not in METHODS)
        for layer in _distinct(units, "layer"):
            in_layer = units.filter(pc.equal(units.column("layer"), layer))
            for method in methods:
                part = in_layer.filter(pc.equal(in_layer.column("method"), method))
                if not part.num_rows:
                    continue
                ids = np.asarray(part.column("unit").to_numpy(), dtype=np.int64)
                unique, first = np.unique(ids, return_index=True)
                if len(unique) < len(ids):  # overlapping files (e.g. an interrupted rewrite): keep one row
                    notes.append(f"{method} {layer}: {len(ids) - len(unique)} duplicate unit rows ignored")
                rs[(layer, method)] = MethodRS(
                    unique, _floats(part.column("rs"))[first], _floats(part.column("activation"))[first]
                )
    present = list(dict.fromkeys([*by_layer, *(layer for layer, _ in rs)]))
    depth = {info.name: info for info in known}
    layers = [info for info in known if info.name in present]
    layers += [LayerInfo(name, None, None, None) for name in present if name not in depth]
    coverage = _coverage(model, known, by_layer, rs, sel is not None, units is not None, notes)
    return RunData(run, layers, by_layer, rs, methods, coverage)


def _distinct(table: pa.Table, column: str) -> list[str]:
    return list(dict.fromkeys(table.column(column).to_pylist()))


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _coverage(model, known, by_layer, rs, has_sel, has_units, notes) -> Coverage:
    coverage = Coverage(model=model, notes=list(notes))
    if not has_sel:
        coverage.notes.append("the run has no selectivity table")
    if not has_units:
        coverage.notes.append("the run has no units table (no AM/IAM results): selectivity figures only")
    if not known:
        if model:
            coverage.notes.append(f"model {model!r} is not in this repsub's catalog: coverage not checked")
        return coverage
    present = set(by_layer) | {layer for layer, _ in rs}
    coverage.missing_layers = [info.name for info in known if info.name not in present]
    if coverage.missing_layers:
        coverage.notes.append(f"layers without any result: {', '.join(coverage.missing_layers)}")
    for table in ["selectivity", *METHODS]:
        missing: dict[str, list[int]] = {}
        for info in known:
            have = by_layer[info.name].units if table == "selectivity" and info.name in by_layer else None
            if table != "selectivity" and (info.name, table) in rs:
                have = rs[(info.name, table)].units
            gone = np.setdiff1d(np.arange(info.catalog_units), have if have is not None else [])
            if len(gone):
                missing[info.name] = gone.tolist()
        coverage.missing_units[table] = missing
        if missing:
            parts = [f"{name} {format_ranges(units)}" for name, units in missing.items()]
            coverage.notes.append(f"{table}: missing units: {'; '.join(parts)}")
    return coverage


def format_ranges(units: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, unit in enumerate(units):
        if start is None:
            start = unit
        if i + 1 == len(units) or units[i + 1] != unit + 1:
            parts.append(str(start) if start == unit else f"{start}-{unit}")
            start = None
    return ", ".join(parts)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """scipy's Spearman rho and p-value; NaN for fewer than MIN_PAIRS pairs or a constant column."""
    if len(x) < MIN_PAIRS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def bootstrap_rng(seed: int, layer: str, method: str) -> np.random.Generator:
    """The generator of one (layer, method)'s bootstrap: independent of which other layers are reported."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), zlib.crc32(method.encode())])


def bootstrap_spearman(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, resamples: int, confidence: float = CONFIDENCE
) -> tuple[float, float, int]:
    """Percentile interval of Spearman rho over `resamples` resamples of the pairs, and how many were usable.

    Resample b is ``rng.integers(0, n, size=n)``, drawn in order b = 0, 1, ...
    """
    n = len(x)
    if n < MIN_PAIRS:
        return math.nan, math.nan, 0
    rhos = []
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        idx = np.stack([rng.integers(0, n, size=n) for _ in range(min(_BOOTSTRAP_CHUNK, resamples - start))])
        rhos.append(_rowwise_spearman(x[idx], y[idx]))
    rho = np.concatenate(rhos)
    rho = rho[np.isfinite(rho)]
    if not rho.size:
        return math.nan, math.nan, 0
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(rho, [tail, 100 - tail])
    return float(low), float(high), int(rho.size)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (Pearson of average ranks, as scipy); NaN where a row is constant."""
    xr = stats.rankdata(x, axis=1)
    yr = stats.rankdata(y, axis=1)
    xr -= xr.mean(axis=1, keepdims=True)
    yr -= yr.mean(axis=1, keepdims=True)
    denom = np.sqrt((xr * xr).sum(axis=1) * (yr * yr).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (xr * yr).sum(axis=1) / denom
    rho[denom == 0] = np.nan
    return np.clip(rho, -1.0, 1.0)


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def layer_method_stats(data: RunData, options: StatsOptions = StatsOptions()) -> pa.Table:
    """The statistics rows (STATS_SCHEMA), one per layer and method, layers in depth order."""
    options.validate()
    rows = []
    for info in data.layers:
        row: dict = {"layer": info.name, "depth": info.depth, "after_relu": info.after_relu}
        sel = data.selectivity.get(info.name)
        if sel is not None:
            alive = sel.selectivity[~sel.dead & np.isfinite(sel.selectivity)]
            row.update(
                units=len(sel.units),
                dead=int(sel.dead.sum()),
                mean_selectivity=_mean(alive),
                median_selectivity=_median(alive),
                n_high=int((alive >= options.high).sum()),
                n_low=int((alive <= options.low).sum()),
            )
        methods = [m for m in data.methods if (info.name, m) in data.rs]
        if not methods:
            rows.append(row)
            continue
        for method in methods:
            rows.append({**row, "method": method, **_method_stats(data, info.name, method, sel, options)})
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


def _method_stats(data: RunData, layer: str, method: str, sel, options: StatsOptions) -> dict:
    rs = data.rs[(layer, method)]
    units, x, y = data.pairs(layer, method)
    if sel is not None:
        _, in_sel, _ = np.intersect1d(sel.units, rs.units, assume_unique=True, return_indices=True)
        matched_dead = int(sel.dead[in_sel].sum())
        matched = len(in_sel)
    else:
        matched_dead = matched = 0
    rho, p = spearman(x, y)
    low, high, used = bootstrap_spearman(
        x, y, bootstrap_rng(options.seed, layer, method), options.resamples, options.confidence
    )
    return {
        "units_rs": len(rs.units),
        "mean_rs": _mean(rs.rs),
        "median_rs": _median(rs.rs),
        "n_spearman": len(units),
        "excluded_dead": matched_dead,
        "excluded_nan": matched - matched_dead - len(units),
        "unmatched": len(rs.units) - matched,
        "spearman_rho": rho,
        "spearman_p": p,
        "rho_ci_low": low,
        "rho_ci_high": high,
        "bootstrap_resamples": used,
        "mean_rs_high": _mean(y[x >= options.high]),
        "mean_rs_low": _mean(y[x <= options.low]),
    }


def stats_metadata(data: RunData, options: StatsOptions) -> dict[bytes, bytes]:
    """Parquet schema metadata: how the rows were computed."""
    meta = {
        "run": data.run.uri,
        "high_selectivity": options.high,
        "low_selectivity": options.low,
        "seed": options.seed,
        "bootstrap_resamples": options.resamples,
        "confidence": options.confidence,
    }
    return {b"repsub_report": json.dumps(meta).encode()}
