"""Importance by ablation against RS and selectivity, per layer: `importance_stats.parquet`, `Run.importance_stats()`.

Long format, one row per (layer, ablation, measure, against), so that a notebook picks a relation with one
filter (``against == "rs_iam" and measure == "accuracy_drop"``):

- ``ablation``: zero or mean; ``measure``: ``accuracy_drop`` (the importance) or ``loss_increase``
  (repsub.analysis.importance); ``against``: ``rs_<method>`` (the unit's RS of that method's image: rs_am,
  rs_iam) or ``selectivity``.
- ``units``: the importance rows of the layer and ablation; ``n_images`` and ``baseline_accuracy``: the
  measurement's (the largest image count of the rows, the mean of their baseline accuracies).
- ``n_included``: the units in the statistics. A unit's RS enters as in the RS statistics (alive, status
  ok, finite selectivity and RS: repsub.analysis.exclusion), its selectivity when it is alive and finite,
  and its importance when both measures are finite (the same units for both); the others are counted by their first reason in
  ``excluded_<reason>`` (IMPORTANCE_REASONS), so ``units == n_included + the excluded counts``.
- ``mean_importance``: the measure's mean over the included units; ``spearman_rho``, ``spearman_p``
  (scipy) and the percentile bootstrap interval ``rho_ci_low``, ``rho_ci_high`` over the same units, as in
  repsub.analysis.stats: ``resamples`` resamples of units from
  ``bootstrap_rng(seed, layer, "importance/<ablation>/<measure>/<against>")``, the usable ones counted in
  ``bootstrap_resamples``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from repsub.analysis.exclusion import IMPORTANCE_REASONS, importance_reasons
from repsub.analysis.importance import MEASURES, LayerImportance
from repsub.analysis.load import RunData
from repsub.analysis.stats import StatsOptions, bootstrap_rng, bootstrap_spearman, spearman

IMPORTANCE_STATS_FILE = "importance_stats.parquet"
SELECTIVITY = "selectivity"
EXCLUDED_COLUMNS = [f"excluded_{reason}" for reason in IMPORTANCE_REASONS]

IMPORTANCE_STATS_SCHEMA = pa.schema([
    ("layer", pa.string()),
    ("depth", pa.int32()),
    ("read", pa.string()),
    ("ablation", pa.string()),  # zero or mean
    ("measure", pa.string()),  # accuracy_drop (the importance) or loss_increase
    ("against", pa.string()),  # rs_am, rs_iam, selectivity
    ("units", pa.int64()),  # importance rows of the layer and ablation
    ("n_images", pa.int64()),
    ("baseline_accuracy", pa.float64()),
    ("n_included", pa.int64()),
    *((name, pa.int64()) for name in EXCLUDED_COLUMNS),
    ("mean_importance", pa.float64()),  # the measure's mean over the included units
    ("spearman_rho", pa.float64()),
    ("spearman_p", pa.float64()),
    ("rho_ci_low", pa.float64()),
    ("rho_ci_high", pa.float64()),
    ("bootstrap_resamples", pa.int64()),
])  # fmt: skip


def against_names(data: RunData) -> list[str]:
    """What importance is correlated with in this run: the RS of each of its methods, then selectivity."""
    return [f"rs_{method}" for method in data.methods] + [SELECTIVITY]


def against_label(against: str) -> str:
    """'rs_iam' -> 'RS (IAM)', 'selectivity' -> 'selectivity'."""
    return f"RS ({against.removeprefix('rs_').upper()})" if against.startswith("rs_") else against


def _lookup(sorted_units: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into sorted_units, found) for each wanted unit."""
    index = np.searchsorted(sorted_units, wanted)
    clipped = np.minimum(index, max(len(sorted_units) - 1, 0))
    found = (index < len(sorted_units)) & (sorted_units[clipped] == wanted if len(sorted_units) else False)
    return clipped, np.asarray(found, dtype=bool)


def pairs(data: RunData, layer: str, rows: LayerImportance, against: str) -> tuple[np.ndarray, np.ndarray]:
    """(what importance is compared with, the exclusion reason) per importance row of `rows`, in unit order."""
    importance = rows.accuracy_drop + rows.loss_increase  # NaN where either is: the row is unusable
    return relation_pairs(data, layer, rows.indices, importance, against)


def relation_pairs(
    data: RunData,
    layer: str,
    indices: np.ndarray,
    values: np.ndarray,
    against: str,
    nan_reason="nan_importance",
) -> tuple[np.ndarray, np.ndarray]:
    """(what a per-unit measure is compared with, the exclusion reason) per unit of `indices` (sorted), whose
    measure is `values`: RS of a method (`rs_<method>`) or selectivity, with the rules of importance_reasons."""
    n = len(indices)
    sel = data.selectivity.get(layer)
    if sel is not None:
        at, has_sel = _lookup(sel.indices, indices)
        selectivity = np.where(has_sel, sel.selectivity[at] if len(sel.indices) else np.nan, np.nan)
        dead = has_sel & (sel.dead[at] if len(sel.indices) else False)
    else:
        has_sel, selectivity, dead = np.zeros(n, bool), np.full(n, np.nan), np.zeros(n, bool)
    if against == SELECTIVITY:
        return selectivity, importance_reasons(values, has_sel, dead, selectivity, nan_reason=nan_reason)
    method_rows = data.rows.get((layer, against.removeprefix("rs_")))
    if method_rows is None:
        has_rs, rs, rs_reason = np.zeros(n, bool), np.full(n, np.nan), np.full(n, None, dtype=object)
    else:
        at, has_rs = _lookup(method_rows.indices, indices)
        rs = np.where(has_rs, method_rows.rs[at], np.nan)
        rs_reason = np.where(has_rs, method_rows.reason[at], None)
    return rs, importance_reasons(
        values, has_sel, dead, selectivity, rs_reason, has_rs, nan_reason=nan_reason
    )


def compute_importance_stats(data: RunData, options: StatsOptions | None = None) -> pa.Table:
    """The rows (IMPORTANCE_STATS_SCHEMA), layers in depth order; no rows for a run without importance.
    `options`: the report's defaults unless given (the thresholds do not enter)."""
    options = options or StatsOptions()
    options.validate()
    out = []
    if data.importance is None:
        return pa.Table.from_pylist(out, schema=IMPORTANCE_STATS_SCHEMA)
    for info in data.layers:
        for ablation in data.importance.ablations:
            rows = data.importance.rows.get((info.name, ablation))
            if rows is None:
                continue
            head = {
                "layer": info.name, "depth": info.depth, "read": info.read, "ablation": ablation,
                "units": len(rows.indices), "n_images": int(rows.n_images.max()) if len(rows.indices) else 0,
                "baseline_accuracy": float(np.mean(rows.baseline_accuracy)) if len(rows.indices) else math.nan,
            }  # fmt: skip
            for against in against_names(data):
                other, reason = pairs(data, info.name, rows, against)
                counts = {f"excluded_{r}": int((reason == r).sum()) for r in IMPORTANCE_REASONS}
                for measure in MEASURES:
                    values = rows.measure(measure)
                    kept = values[included(reason)]
                    out.append({**head, "measure": measure, "against": against, **counts,
                                "mean_importance": float(kept.mean()) if kept.size else math.nan,
                                **correlation(values, other, reason, info.name,
                                              f"importance/{ablation}/{measure}/{against}", options)})  # fmt: skip
    return pa.Table.from_pylist(out, schema=IMPORTANCE_STATS_SCHEMA)


def correlation(
    values: np.ndarray, other: np.ndarray, reason: np.ndarray, layer: str, key: str, options: StatsOptions
) -> dict:
    """Spearman's rho of `values` against `other` over the rows without an exclusion `reason`, with its
    seeded bootstrap interval (`key` names the relation in the bootstrap's seed)."""
    keep = included(reason)
    x, y = values[keep], other[keep]
    rho, p = spearman(x, y)
    rng = bootstrap_rng(options.seed, layer, key)
    low, high, used = bootstrap_spearman(x, y, rng, options.resamples, options.confidence)
    return {
        "n_included": int(keep.sum()),
        "spearman_rho": rho,
        "spearman_p": p,
        "rho_ci_low": low,
        "rho_ci_high": high,
        "bootstrap_resamples": used,
    }


def included(reason: np.ndarray) -> np.ndarray:
    """The rows that enter a correlation: those without an exclusion reason."""
    return np.array([r is None for r in reason], dtype=bool)


def importance_metadata(data: RunData, options: StatsOptions) -> dict[bytes, bytes]:
    """Parquet schema metadata of importance_stats.parquet: how the rows were computed, and the measurements'
    configurations from the manifest (`importance/<ablation>`)."""
    commands = data.run.manifest.get("commands") or {}
    meta = {
        "run": data.run.uri,
        "seed": options.seed,
        "bootstrap_resamples": options.resamples,
        "confidence": options.confidence,
        "measures": MEASURES,
        "exclusions": IMPORTANCE_REASONS,
        "importance_commands": {k: v for k, v in commands.items() if k.startswith("importance/")},
    }
    return {b"repsub_importance": json.dumps(meta, default=str).encode()}
