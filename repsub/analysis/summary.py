"""`repsub summary`: the statistics table (repsub.analysis.stats) as one line per layer, methods side by side.

Per layer: how it is read, units, dead units, mean selectivity; per method m: ``n_m`` (units in the RS
statistics), ``mean_rs_m``, ``spearman_m`` (rho of RS against selectivity) and ``left_out_m`` (the units
left out, by reason). The same numbers as the report's table; the summary skips only the bootstrap interval.

A run with an importance table gets a second table (`importance_summary_rows`): one line per layer, ablation
and measure, with Spearman rho of importance against each relation (``rho_rs_am``, ``rho_rs_iam``,
``rho_selectivity``) and the units in it (``n_...``), as in importance_stats.parquet.

A run with the targets of a basis (repsub basis fit, then a command with --basis) gets a table of the bases
side by side: one line per layer and basis, the units first (repsub.analysis.bases_side_by_side); the tables
above are the units'.
"""

from __future__ import annotations

import math

import pyarrow as pa

from repsub.analysis.bases_side_by_side import LEGEND as BASES_LEGEND
from repsub.analysis.bases_side_by_side import bases_stats, basis_data, has_bases, side_by_side_rows
from repsub.analysis.importance_stats import compute_importance_stats
from repsub.analysis.interpretability import kind_label
from repsub.analysis.interpretability_stats import compute_interpretability_stats
from repsub.analysis.load import load_run_data
from repsub.analysis.stats import StatsOptions, compute_stats, left_out
from repsub.errors import visible

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


IMPORTANCE_LEGEND = (
    "importance: accuracy_drop (accuracy minus accuracy with the unit ablated) or loss_increase; rho: Spearman "
    "of importance with RS (AM, IAM) or selectivity; n: units in it (RS: as above; selectivity: alive, finite)"
)


def run_summary(run, options: StatsOptions = SUMMARY_OPTIONS) -> list[dict]:
    """The summary rows of an opened run (repsub.open_run)."""
    return summary_rows(compute_stats(load_run_data(run), options))


def run_summaries(run, options: StatsOptions = SUMMARY_OPTIONS, with_bases: bool = False) -> tuple:
    """The summary rows, the importance summary rows (empty without importance) and the interpretability
    summary rows (empty without an index), from one reading; `with_bases`: and the bases side by side (empty
    for a run of units only: repsub.analysis.bases_side_by_side)."""
    data = load_run_data(run)
    importance = importance_summary_rows(compute_importance_stats(data, options)) if data.importance else []
    index = (
        interpretability_summary_rows(compute_interpretability_stats(data, options))
        if data.interpretability
        else []
    )
    summaries = (summary_rows(compute_stats(data, options)), importance, index)
    if not with_bases:
        return summaries
    datas = basis_data(run, data)
    bases = side_by_side_rows(bases_stats(datas, options), datas) if has_bases(datas) else []
    return (*summaries, bases)


def format_bases_summary(rows: list[dict]) -> str:
    return format_table(rows) + "\n" + BASES_LEGEND if rows else ""


INTERPRETABILITY_LEGEND = (
    "index: the 2AFC interpretability index (0.5 chance, 1 always right), mean over the layer's units with one; "
    "rho: Spearman of the index with RS (AM, IAM) or selectivity; n: units in it (as for importance)"
)


def interpretability_summary_rows(stats: pa.Table) -> list[dict]:
    """One dict per layer and similarity (and variant) from the interpretability statistics."""
    lines: dict[tuple, dict] = {}
    for row in stats.to_pylist():
        line = lines.setdefault(
            (row["layer"], row["similarity"], row["variant"]),
            {"layer": row["layer"], "similarity": kind_label(row["similarity"], row["variant"]),
             "units": row["units"], "mean_index": row["mean_index"]},
        )  # fmt: skip
        line[f"rho_{row['against']}"] = row["spearman_rho"]
        line[f"n_{row['against']}"] = row["n_included"]
    return list(lines.values())


def format_interpretability_summary(rows: list[dict]) -> str:
    return format_table(rows) + "\n" + INTERPRETABILITY_LEGEND if rows else ""


def importance_summary_rows(importance: pa.Table) -> list[dict]:
    """One dict per layer, ablation and measure from the importance statistics (repsub.analysis.importance_stats)."""
    lines: dict[tuple, dict] = {}
    for row in importance.to_pylist():
        line = lines.setdefault(
            (row["layer"], row["ablation"], row["measure"]),
            {key: row[key] for key in ("layer", "ablation", "measure", "units", "baseline_accuracy")},
        )
        line[f"rho_{row['against']}"] = row["spearman_rho"]
        line[f"n_{row['against']}"] = row["n_included"]
    return list(lines.values())


def format_importance_summary(rows: list[dict]) -> str:
    return format_table(rows) + "\n" + IMPORTANCE_LEGEND if rows else ""


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
    return visible(value)  # a name's bidi controls and terminal escapes shown, not obeyed
