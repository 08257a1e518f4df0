"""The statistics of a run, per layer and method: the one implementation `report`, `summary` and
`Run.stats()` share.

One row per layer and method (a layer without RS rows gets one row with method null), of the targets of one
basis (``basis``: "unit", the units, or a basis's directions; `bases_stats` stacks every basis of a run):

- ``units``, ``dead``: the layer's selectivity rows, and those marked dead (NaN selectivity).
- ``mean_selectivity``, ``median_selectivity``, ``n_high``, ``n_low``: over the layer's alive units with a
  finite selectivity; high means selectivity >= ``high``, low <= ``low``. They do not depend on the method.
- ``units_rs``: the method's RS rows of the layer. Each either enters the RS statistics (``n_included``)
  or is left out for one reason (repsub.analysis.exclusion), counted in ``excluded_<reason>``:
  ``units_rs == n_included + excluded_dead + excluded_no_response + excluded_nonfinite +
  excluded_no_selectivity + excluded_nan_selectivity``.
- ``mean_rs``, ``median_rs``, Spearman rho of RS against selectivity (scipy, with its p-value), the
  bootstrap interval and ``mean_rs_high`` / ``mean_rs_low`` (mean RS of the included units of high / low
  selectivity): all over the same ``n_included`` units.
- ``rho_ci_low``, ``rho_ci_high``: percentile bootstrap interval: units resampled with replacement,
  ``resamples`` times, from ``bootstrap_rng(seed, layer, method)``; resamples where a column is constant
  (rho undefined) are dropped and the rest counted in ``bootstrap_resamples``.
"""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pyarrow as pa
from scipy import stats

from repsub.analysis.exclusion import REASONS
from repsub.analysis.load import RunData
from repsub.analysis.options import (  # noqa: F401  (re-exported: the statistics' options)
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    DEFAULT_SEED,
    HIGH_SELECTIVITY,
    LOW_SELECTIVITY,
    StatsOptions,
)

MIN_PAIRS = 3  # fewer pairs: no Spearman rho (NaN)
_BOOTSTRAP_CHUNK = 100  # resamples ranked together (bounds memory for 4096-unit layers)
EXCLUDED_COLUMNS = [f"excluded_{reason}" for reason in REASONS]

STATS_SCHEMA = pa.schema([
    ("layer", pa.string()),
    ("basis", pa.string()),  # whose targets: "unit" (the units) or a basis's name
    ("depth", pa.int32()),  # position in the model's catalog (0 = first layer); null if not in it
    ("read", pa.string()),  # how the layer is read (relu, block, logits, module); null if unknown
    ("method", pa.string()),
    ("units", pa.int64()),
    ("dead", pa.int64()),
    ("mean_selectivity", pa.float64()),
    ("median_selectivity", pa.float64()),
    ("n_high", pa.int64()),
    ("n_low", pa.int64()),
    ("units_rs", pa.int64()),
    ("n_included", pa.int64()),
    *((name, pa.int64()) for name in EXCLUDED_COLUMNS),
    ("mean_rs", pa.float64()),
    ("median_rs", pa.float64()),
    ("spearman_rho", pa.float64()),
    ("spearman_p", pa.float64()),
    ("rho_ci_low", pa.float64()),
    ("rho_ci_high", pa.float64()),
    ("bootstrap_resamples", pa.int64()),
    ("mean_rs_high", pa.float64()),
    ("mean_rs_low", pa.float64()),
])  # fmt: skip


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
    if n < MIN_PAIRS or resamples < 1:
        return math.nan, math.nan, 0
    x_order, y_order = _tie_groups(x), _tie_groups(y)
    rhos = []
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        idx = np.stack([rng.integers(0, n, size=n) for _ in range(min(_BOOTSTRAP_CHUNK, resamples - start))])
        rhos.append(_resampled_spearman(x_order, y_order, idx))
    rho = np.concatenate(rhos)
    rho = rho[np.isfinite(rho)]
    if not rho.size:
        return math.nan, math.nan, 0
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(rho, [tail, 100 - tail])
    return float(low), float(high), int(rho.size)


# A resample's Spearman rho without sorting it: the values are sorted once, and a resample is its count of
# each original pair (B x n). In sorted order, the cumulative counts give every value's average rank within
# the resample (ties averaged, as scipy's rankdata); rho is the Pearson correlation of the ranks, each pair
# weighted by its count. Ranks are multiples of 1/2 and counts integers, so the sums are exact and a constant
# resample gives exactly zero variance (rho NaN). Three times faster than ranking each resample
# (benchmarks/report_scale.py --light), equal to scipy.stats.spearmanr on the resample to ~1e-16.


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the sorting order, the first sorted position of each group of equal values, each group's end)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    start = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, start, np.r_[start[1:], len(values)]


def _ranks(groups: tuple[np.ndarray, np.ndarray, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Each original value's average rank within each resample (rows of `counts`)."""
    order, start, end = groups
    cumulative = np.concatenate([np.zeros((len(counts), 1)), np.cumsum(counts[:, order], axis=1)], axis=1)
    before, through = cumulative[:, start], cumulative[:, end]
    ranks = np.empty_like(counts)
    ranks[:, order] = (before + (through - before + 1) / 2)[:, np.repeat(np.arange(len(start)), end - start)]
    return ranks


def _resampled_spearman(x_groups: tuple, y_groups: tuple, idx: np.ndarray) -> np.ndarray:
    """Spearman rho of each resample (a row of `idx`: indices into the pairs); NaN where one side is constant."""
    b, n = idx.shape
    counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
    counts = counts.astype(np.float64)
    xr, yr = _ranks(x_groups, counts), _ranks(y_groups, counts)
    xr -= (counts * xr).sum(axis=1, keepdims=True) / n
    yr -= (counts * yr).sum(axis=1, keepdims=True) / n
    vx, vy = (counts * xr * xr).sum(axis=1), (counts * yr * yr).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (counts * xr * yr).sum(axis=1) / np.sqrt(vx * vy)
    rho[(vx == 0) | (vy == 0)] = np.nan
    return np.clip(rho, -1.0, 1.0)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan


def compute_stats(data: RunData, options: StatsOptions | None = None) -> pa.Table:
    """The statistics rows (STATS_SCHEMA), one per layer and method, layers in depth order (`options`: the
    report's defaults unless given)."""
    options = options or StatsOptions()
    options.validate()
    rows = []
    for info in data.layers:
        row: dict = {"layer": info.name, "basis": data.basis, "depth": info.depth, "read": info.read}
        sel = data.selectivity.get(info.name)
        if sel is not None:
            alive = sel.alive_values
            row.update(
                units=len(sel.indices),
                dead=int(sel.dead.sum()),
                mean_selectivity=_mean(alive),
                median_selectivity=_median(alive),
                n_high=int((alive >= options.high).sum()),
                n_low=int((alive <= options.low).sum()),
            )
        methods = [m for m in data.methods if (info.name, m) in data.rows]
        if not methods:
            rows.append(row)
        for method in methods:
            rows.append({**row, "method": method, **_rs_stats(data, info.name, method, options)})
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


def _rs_stats(data: RunData, layer: str, method: str, options: StatsOptions) -> dict:
    rows = data.rows[(layer, method)]
    _, x, y = data.included(layer, method)
    reasons = rows.reason.tolist()
    rho, p = spearman(x, y)
    low, high, used = bootstrap_spearman(
        x, y, bootstrap_rng(options.seed, layer, method), options.resamples, options.confidence
    )
    return {
        "units_rs": len(rows.indices),
        "n_included": len(x),
        **{f"excluded_{reason}": reasons.count(reason) for reason in REASONS},
        "mean_rs": _mean(y),
        "median_rs": _median(y),
        "spearman_rho": rho,
        "spearman_p": p,
        "rho_ci_low": low,
        "rho_ci_high": high,
        "bootstrap_resamples": used,
        "mean_rs_high": _mean(y[x >= options.high]),
        "mean_rs_low": _mean(y[x <= options.low]),
    }


def left_out(row: dict) -> dict[str, int]:
    """{reason: count} of a statistics row's excluded units, the reasons with a count only."""
    return {reason: row[f"excluded_{reason}"] for reason in REASONS if row.get(f"excluded_{reason}")}


def stats_metadata(data: RunData, options: StatsOptions) -> dict[bytes, bytes]:
    """Parquet schema metadata: how the rows were computed."""
    meta = {
        "run": data.run.uri,
        "high_selectivity": options.high,
        "low_selectivity": options.low,
        "seed": options.seed,
        "bootstrap_resamples": options.resamples,
        "confidence": options.confidence,
        "exclusions": REASONS,
        "catalog": data.catalog_source,
    }
    return {b"repsub_report": json.dumps(meta).encode()}
