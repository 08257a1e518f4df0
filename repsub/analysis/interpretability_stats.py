"""The interpretability index against RS and selectivity, per layer: `interpretability_stats.parquet`,
`Run.interpretability_stats()`, the summary's third table.

Long format, one row per (layer, similarity, variant, against), as importance_stats.parquet:

- ``similarity``, ``variant``: the index's (repsub.core.interpretability: labels, pixels, features, lpips; extremal, central);
  ``against``: ``rs_<method>`` (rs_am, rs_iam) or ``selectivity``.
- ``units``: the index rows of the layer; ``mean_index``: their mean over every unit with a finite index
  (what the layer's units score, whatever their RS), ``n_index`` those units.
- ``n_included``: the units of the Spearman rho. A unit's RS enters as in the RS statistics (alive, status ok,
  finite selectivity and RS: repsub.analysis.exclusion), its selectivity when it is alive and finite, and
  its index when finite; the others are counted by their first reason in ``excluded_<reason>``
  (INTERPRETABILITY_REASONS), so ``units == n_included + the excluded counts``.
- ``spearman_rho``, ``spearman_p`` (scipy) and the percentile bootstrap interval ``rho_ci_low``,
  ``rho_ci_high``: ``resamples`` resamples of units from
  ``bootstrap_rng(seed, layer, "interpretability/<similarity>/<variant>/<against>")``, as repsub.analysis.stats.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from repsub.analysis.exclusion import INTERPRETABILITY_REASONS
from repsub.analysis.importance_stats import against_names, correlation, relation_pairs
from repsub.analysis.load import RunData
from repsub.analysis.stats import StatsOptions

INTERPRETABILITY_STATS_FILE = "interpretability_stats.parquet"
EXCLUDED_COLUMNS = [f"excluded_{reason}" for reason in INTERPRETABILITY_REASONS]

INTERPRETABILITY_STATS_SCHEMA = pa.schema([
    ("layer", pa.string()),
    ("depth", pa.int32()),
    ("read", pa.string()),
    ("similarity", pa.string()),  # labels, pixels
    ("variant", pa.string()),  # extremal (top vs bottom), central
    ("against", pa.string()),  # rs_am, rs_iam, selectivity
    ("units", pa.int64()),  # index rows of the layer
    ("n_index", pa.int64()),  # units with a finite index
    ("mean_index", pa.float64()),  # over those units
    ("n_included", pa.int64()),
    *((name, pa.int64()) for name in EXCLUDED_COLUMNS),
    ("spearman_rho", pa.float64()),
    ("spearman_p", pa.float64()),
    ("rho_ci_low", pa.float64()),
    ("rho_ci_high", pa.float64()),
    ("bootstrap_resamples", pa.int64()),
])  # fmt: skip


def compute_interpretability_stats(data: RunData, options: StatsOptions | None = None) -> pa.Table:
    """The rows (INTERPRETABILITY_STATS_SCHEMA), layers in depth order; none without an index table."""
    options = options or StatsOptions()
    options.validate()
    interpretability = data.interpretability
    out = []
    if interpretability is None:
        return pa.Table.from_pylist(out, schema=INTERPRETABILITY_STATS_SCHEMA)
    for info in data.layers:
        for similarity, variant in interpretability.kinds:
            rows = interpretability.rows.get((info.name, similarity, variant))
            if rows is None:
                continue
            finite = rows.index[np.isfinite(rows.index)]
            head = {"layer": info.name, "depth": info.depth, "read": info.read, "similarity": similarity,
                    "variant": variant, "units": len(rows.indices), "n_index": len(finite),
                    "mean_index": float(finite.mean()) if finite.size else math.nan}  # fmt: skip
            for against in against_names(data):
                other, reason = relation_pairs(
                    data, info.name, rows.indices, rows.index, against, "nan_index"
                )
                key = f"interpretability/{similarity}/{variant}/{against}"
                out.append({**head, "against": against,
                            **{f"excluded_{r}": int((reason == r).sum()) for r in INTERPRETABILITY_REASONS},
                            **correlation(rows.index, other, reason, info.name, key, options)})  # fmt: skip
    return pa.Table.from_pylist(out, schema=INTERPRETABILITY_STATS_SCHEMA)


def interpretability_metadata(data: RunData, options: StatsOptions) -> dict[bytes, bytes]:
    """Parquet schema metadata: how the rows were computed, and the index commands' configurations."""
    commands = data.run.manifest.get("commands") or {}
    meta = {
        "run": data.run.uri,
        "seed": options.seed,
        "bootstrap_resamples": options.resamples,
        "confidence": options.confidence,
        "exclusions": INTERPRETABILITY_REASONS,
        "interpretability_commands": {k: v for k, v in commands.items() if k.startswith("interpretability/")},
    }
    return {b"repsub_interpretability": json.dumps(meta, default=str).encode()}
