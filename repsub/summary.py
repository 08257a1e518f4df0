"""Per-layer summary of a run: units, dead units, mean selectivity, mean RS per method, Spearman rho of RS vs selectivity."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
from scipy import stats

from .store import Run


def layer_summary(run: Run, layer_order: list[str] | None = None) -> list[dict]:
    """One dict per layer. Spearman rho is over the units alive (not dead) that have both values."""
    sel = run.table("selectivity", columns=["layer", "unit", "selectivity", "dead"])
    units = run.table("units", columns=["layer", "unit", "method", "rs"])
    layers = list(layer_order or [])
    for table in (sel, units):
        if table is not None:
            layers += [n for n in dict.fromkeys(table.column("layer").to_pylist()) if n not in layers]
    methods = sorted(set(units.column("method").to_pylist())) if units is not None else []
    logits = _logit_layers(run)
    rows = []
    for layer in layers:
        # "logits": no ReLU, so selectivity of signed values, unbounded: read that row with care
        row: dict = {"layer": layer, "read": "logits" if layer in logits else "relu"}
        sel_by_unit: dict[int, float] = {}
        if sel is not None:
            part = sel.filter(pc.equal(sel.column("layer"), layer))
            dead = np.asarray(part.column("dead").to_pylist(), dtype=bool)
            values = np.asarray(part.column("selectivity").to_pylist(), dtype=np.float64)
            row.update(
                units=part.num_rows,
                dead=int(dead.sum()),
                mean_selectivity=float(np.nanmean(values)) if (~np.isnan(values)).any() else math.nan,
            )
            sel_by_unit = dict(zip(part.column("unit").to_pylist(), values.tolist(), strict=True))
        for method in methods:
            part = units.filter(
                pc.and_(pc.equal(units.column("layer"), layer), pc.equal(units.column("method"), method))
            )
            rs = dict(zip(part.column("unit").to_pylist(), part.column("rs").to_pylist(), strict=True))
            row[f"mean_rs_{method}"] = float(np.mean(list(rs.values()))) if rs else math.nan
            pairs = [
                (sel_by_unit[u], r)
                for u, r in rs.items()
                if u in sel_by_unit and not math.isnan(sel_by_unit[u])
            ]
            row[f"spearman_{method}"] = _spearman(pairs)
        rows.append(row)
    return rows


def _logit_layers(run: Run) -> set[str]:
    from .models import MODELS, catalog

    name = run.manifest.get("model", {}).get("model")
    if name not in MODELS:
        return set()
    return {layer.name for layer in catalog(name) if not layer.after_relu}


def _spearman(pairs: list[tuple[float, float]]) -> float:
    if len(pairs) < 3:
        return math.nan
    x, y = np.asarray(pairs).T
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan  # a constant column has no rank correlation
    return float(stats.spearmanr(x, y).statistic)


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
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
