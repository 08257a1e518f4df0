"""`repsub summary`: the statistics table (repsub.analysis.stats) as one line per layer, methods side by side.

Per layer: how it is read, units, dead units, mean selectivity; per method m: ``n_m`` (units in the RS
statistics), ``mean_rs_m``, ``spearman_m`` (rho of RS against selectivity) and ``left_out_m`` (the units
left out, by reason). The same numbers as the report's table; the summary skips only the bootstrap interval.
"""

from __future__ import annotations

import math

import pyarrow as pa

from .load import load_run_data
from .stats import StatsOptions, compute_stats, left_out

SUMMARY_OPTIONS = StatsOptions(resamples=0)  # everything but the bootstrap interval, which it does not print
LEGEND = (
    "n: units in mean RS and Spearman rho (alive, status ok, finite selectivity and RS); "
    "left_out: the others, by reason; read: relu/block post-ReLU, logits/module signed (selectivity unbounded)"
)


def summary_rows(stats: pa.Table) -> list[dict]:
    """One dict per layer from the statistics rows (one per layer and method)."""
    by_layer: dict[str, dict] = {}
    for row in stats.to_pylist():
        line = by_layer.setdefault(
            row["layer"],
            {
                "layer": row["layer"],
                "read": row["read"],
                "units": row["units"],
                "dead": row["dead"],
                "mean_selectivity": row["mean_selectivity"],
            },
        )
        method = row["method"]
        if method is None:
            continue
        reasons = left_out(row)
        line[f"n_{method}"] = row["n_included"]
        line[f"mean_rs_{method}"] = row["mean_rs"]
        line[f"spearman_{method}"] = row["spearman_rho"]
        line[f"left_out_{method}"] = ", ".join(f"{r} {n}" for r, n in reasons.items()) if reasons else "0"
    return list(by_layer.values())


def run_summary(run, options: StatsOptions = SUMMARY_OPTIONS) -> list[dict]:
    """The summary rows of an opened run (repsub.open_run)."""
    return summary_rows(compute_stats(load_run_data(run), options))


def format_summary(rows: list[dict]) -> str:
    """The rows as a text table, with the legend of its columns."""
    return format_table(rows) + ("\n" + LEGEND if rows else "")


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as a fixed-width text table (columns in first-seen order, '-' where a row lacks one)."""
    if not rows:
        return "(empty run)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)
