"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

File names say what a figure shows:

- ``rs_vs_selectivity_<layer>.png``: RS against selectivity, one panel per method (the paper's Figures 1, 4, 5);
  units left out of the statistics (repsub.analysis.exclusion) drawn as grey crosses;
- ``rho_by_depth.png``: Spearman rho against layer depth with bootstrap intervals (Figures 3b, 6b);
- ``importance_vs_<rs_am|rs_iam|selectivity>_rho_by_depth.png``: Spearman rho of importance (accuracy drop
  with the unit ablated) against the unit's RS (AM, IAM) or its selectivity, by depth, one line per ablation
  (runs with an importance table only);
- ``interpretability_by_depth.png``: the mean interpretability index per layer, one line per similarity, and
  ``interpretability_vs_<rs_am|rs_iam|selectivity>_rho_by_depth.png``: Spearman rho of the index against the
  unit's RS or selectivity by depth, one line per similarity (runs with `repsub interpretability` only);
- ``substitutes_<layer>_<unit>.png``: a unit's image and the images of the units that respond more to it
  (Figure 2);
- ``histograms_<layer>.png``: the layer's selectivity and RS histograms;
- ``rho_by_depth_bases.png`` (runs with the directions of a basis only): Spearman rho of RS against
  selectivity by depth, one line per basis and method, each from its basis's rows.

Every other figure is the units' (the unit basis): a basis's directions never enter it.

Each function writes one PNG and returns its path, or None when the run has nothing to draw.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from repsub.analysis.importance_stats import against_label
from repsub.analysis.interpretability import kind_label
from repsub.analysis.layers import SIGNED_NOTE
from repsub.analysis.load import RunData, read_rows
from repsub.analysis.stats import StatsOptions
from repsub.errors import RunError, UsageError
from repsub.runstore.tables import decode_png

DPI = 100
GRID_MAX_SUBSTITUTES = 11  # images shown next to the unit in the Figure-2 grid (most active first)
GRID_COLUMNS = 6
METHOD_COLOURS = {"am": "tab:blue", "iam": "tab:orange"}
ABLATION_COLOURS = {"zero": "tab:purple", "mean": "tab:brown"}
IMPORTANCE_MEASURE = "accuracy_drop"  # the measure the importance figures draw (repsub.analysis.importance)
RHO_BY_DEPTH = "rho_by_depth.png"
BASES_RHO_BY_DEPTH = "rho_by_depth_bases.png"  # a line per basis and method (a run with bases only)
FIGURE_PATTERNS = ("rs_vs_selectivity_*.png", "rho_by_depth*.png", "substitutes_*.png", "histograms_*.png",
                   "importance_vs_*_rho_by_depth.png", "interpretability_*.png")  # fmt: skip
INTERPRETABILITY_BY_DEPTH = "interpretability_by_depth.png"
SIMILARITY_COLOURS = {
    "labels": "tab:green",
    "pixels": "tab:red",
    "features": "tab:cyan",
    "lpips": "tab:olive",
}


def safe_name(text: str) -> str:
    """A layer name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def scatter_name(layer: str) -> str:
    return f"rs_vs_selectivity_{safe_name(layer)}.png"


def importance_rho_name(against: str) -> str:
    return f"importance_vs_{safe_name(against)}_rho_by_depth.png"


def interpretability_rho_name(against: str) -> str:
    return f"interpretability_vs_{safe_name(against)}_rho_by_depth.png"


def histograms_name(layer: str) -> str:
    return f"histograms_{safe_name(layer)}.png"


def substitutes_name(layer: str, unit: int) -> str:
    return f"substitutes_{safe_name(layer)}_{unit}.png"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _layer_title(data: RunData, layer: str) -> str:
    return f"{layer} ({SIGNED_NOTE})" if data.layer(layer).signed else layer


def rs_vs_selectivity(data: RunData, layer: str, options: StatsOptions, path: Path) -> Path | None:
    """A scatter of RS (y) against selectivity (x), one panel per method, for one layer."""
    methods = [m for m in data.methods if (layer, m) in data.rows]
    if not methods or layer not in data.selectivity:
        return None
    shown = list(dict.fromkeys(["am", "iam", *methods]))
    fig = Figure(figsize=(4.2 * len(shown), 3.6), layout="constrained")
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, method in zip(axes, shown, strict=True):
        rows = data.rows.get((layer, method))
        if rows is None:
            ax.text(
                0.5, 0.5, f"no {method.upper()} results", ha="center", va="center", transform=ax.transAxes
            )
            ax.set_title(f"{method.upper()}: n = 0", fontsize=10)
        else:
            keep = rows.included
            out = ~keep & np.isfinite(rows.selectivity) & np.isfinite(rows.rs)
            ax.scatter(
                rows.selectivity[out], rows.rs[out], s=12, marker="x", color="0.6", linewidths=0.8,
                label=f"left out ({int((~keep).sum())})",
            )  # fmt: skip
            ax.scatter(
                rows.selectivity[keep], rows.rs[keep], s=10, alpha=0.6, linewidths=0,
                color=METHOD_COLOURS.get(method, "tab:green"), label=f"included ({int(keep.sum())})",
            )  # fmt: skip
            ax.axvline(options.high, color="grey", linestyle="--", linewidth=0.8)
            ax.axvline(options.low, color="grey", linestyle=":", linewidth=0.8)
            ax.set_title(
                f"{method.upper()}: n = {int(keep.sum())}, {int((~keep).sum())} left out", fontsize=10
            )
            if out.any():
                ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel("class selectivity")
        if data.layer(layer).signed:
            ax.set_xscale("symlog", linthresh=1.0)  # signed selectivity: a few units far out
            ax.set_xlabel("class selectivity (symlog)")
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("RS (fraction of the layer more active)")
    fig.suptitle(_layer_title(data, layer), fontsize=11)
    return _save(fig, path)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def rho_by_depth(data: RunData, stats: pa.Table, path: Path) -> Path | None:
    """Spearman rho of RS against selectivity per layer, with bootstrap intervals, in depth order."""
    rows = [r for r in stats.to_pylist() if r["method"] is not None]
    if not rows:
        return None
    series = [
        (method.upper(), METHOD_COLOURS.get(method, "tab:green"), [r for r in rows if r["method"] == method])
        for method in dict.fromkeys(r["method"] for r in rows)
    ]
    return _draw_rho_by_depth(data, series, "Spearman rho (RS vs selectivity)", path)


def bases_rho_by_depth(data: RunData, stats: pa.Table, path: Path) -> Path | None:
    """`rho_by_depth` with a line per basis and method (`stats`: the statistics of every basis, each basis's
    rows its own), at the layers of the units' data. The other figures are the units' only."""
    layers = {info.name for info in data.layers}
    rows = [r for r in stats.to_pylist() if r["method"] is not None and r["layer"] in layers]
    keys = list(dict.fromkeys((r["basis"], r["method"]) for r in rows))
    if not rows:
        return None
    series = [
        (f"{basis} {method.upper()}", f"C{i % 10}", [r for r in rows if (r["basis"], r["method"]) == (basis, method)])
        for i, (basis, method) in enumerate(keys)
    ]  # fmt: skip
    return _draw_rho_by_depth(data, series, "Spearman rho (RS vs selectivity), per basis", path)


def importance_rho_by_depth(
    data: RunData, importance_stats: pa.Table, against: str, path: Path
) -> Path | None:
    """Spearman rho of importance (accuracy drop) against `against` (rs_am, rs_iam, selectivity) per layer,
    one line per ablation, with bootstrap intervals."""
    rows = [
        r
        for r in importance_stats.to_pylist()
        if r["against"] == against and r["measure"] == IMPORTANCE_MEASURE
    ]
    if not rows:
        return None
    series = [
        (f"{ablation} ablation", ABLATION_COLOURS.get(ablation, "tab:green"),
         [r for r in rows if r["ablation"] == ablation])
        for ablation in dict.fromkeys(r["ablation"] for r in rows)
    ]  # fmt: skip
    return _draw_rho_by_depth(data, series, f"Spearman rho (importance vs {against_label(against)})", path)


def _similarity_series(rows: list[dict]) -> list[tuple[str, str, list[dict]]]:
    kinds = dict.fromkeys((r["similarity"], r["variant"]) for r in rows)
    return [
        (kind_label(similarity, variant), SIMILARITY_COLOURS.get(similarity, "tab:gray"),
         [r for r in rows if (r["similarity"], r["variant"]) == (similarity, variant)])
        for similarity, variant in kinds
    ]  # fmt: skip


def interpretability_rho_by_depth(
    data: RunData, index_stats: pa.Table, against: str, path: Path
) -> Path | None:
    """Spearman rho of the interpretability index against `against` per layer, one line per similarity."""
    rows = [r for r in index_stats.to_pylist() if r["against"] == against]
    if not rows:
        return None
    label = f"Spearman rho (index vs {against_label(against)})"
    return _draw_rho_by_depth(data, _similarity_series(rows), label, path)


def interpretability_by_depth(data: RunData, index_stats: pa.Table, path: Path) -> Path | None:
    """The mean interpretability index of each layer's units, one line per similarity (0.5: chance)."""
    seen: dict[tuple, dict] = {}
    for r in index_stats.to_pylist():
        seen.setdefault((r["layer"], r["similarity"], r["variant"]), r)  # one row per against: the same mean
    rows = list(seen.values())
    if not rows:
        return None
    known = all(info.depth is not None for info in data.layers)
    position = {info.name: info.depth if known else i for i, info in enumerate(data.layers)}
    fig = Figure(figsize=(max(5.0, 0.55 * len(data.layers) + 2.5), 3.8), layout="constrained")
    ax = fig.subplots()
    for label, colour, mine in _similarity_series(rows):
        mine = [r for r in mine if _finite(r["mean_index"])]
        ax.plot([position[r["layer"]] for r in mine], [r["mean_index"] for r in mine], "-o", color=colour,
                label=label)  # fmt: skip
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    names = [info.name for info in data.layers]
    ax.set_xticks([position[n] for n in names])
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_xlabel("layer (depth order)")
    ax.set_ylabel("mean 2AFC index (0.5: chance)")
    ax.set_ylim(0.4, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def _draw_rho_by_depth(
    data: RunData, series: list[tuple[str, str, list[dict]]], ylabel: str, path: Path
) -> Path:
    """Lines of statistics rows (layer, spearman_rho, rho_ci_low, rho_ci_high) against layer depth."""
    layers = [info.name for info in data.layers]
    # Catalog depth when every layer has one (gaps show the layers the run lacks), else the order.
    known = all(info.depth is not None for info in data.layers)
    position = {info.name: info.depth if known else i for i, info in enumerate(data.layers)}
    fig = Figure(figsize=(max(5.0, 0.55 * len(layers) + 2.5), 3.8), layout="constrained")
    ax = fig.subplots()
    offsets = np.linspace(-0.12, 0.12, len(series)) if len(series) > 1 else [0.0]
    for offset, (label, colour, rows) in zip(offsets, series, strict=True):
        mine = [r for r in rows if _finite(r["spearman_rho"])]
        if not mine:
            continue
        xs = np.array([position[r["layer"]] + offset for r in mine])
        rho = np.array([r["spearman_rho"] for r in mine])
        low = np.array(
            [r["rho_ci_low"] if _finite(r["rho_ci_low"]) else v for r, v in zip(mine, rho, strict=True)]
        )
        high = np.array(
            [r["rho_ci_high"] if _finite(r["rho_ci_high"]) else v for r, v in zip(mine, rho, strict=True)]
        )
        ax.errorbar(xs, rho, yerr=[rho - low, high - rho], fmt="-", color=colour, capsize=3, label=label)
        signed = np.array([data.layer(r["layer"]).signed for r in mine])
        ax.scatter(xs[~signed], rho[~signed], color=colour, zorder=3)
        ax.scatter(xs[signed], rho[signed], facecolors="white", edgecolors=colour, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks([position[n] for n in layers])
    ax.set_xticklabels([f"{n}*" if data.layer(n).signed else n for n in layers], rotation=45, ha="right")
    ax.set_xlabel("layer (depth order; * signed values, hollow marker)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-1.05, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no Spearman rho computable", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def histograms(data: RunData, layer: str, options: StatsOptions, path: Path) -> Path:
    """The layer's selectivity histogram (dead units left out) and RS histograms per method (included units)."""
    fig = Figure(figsize=(8.4, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    sel = data.selectivity.get(layer)
    if sel is not None:
        values = sel.alive_values
        left.hist(values, bins=20, color="tab:grey")
        left.axvline(options.high, color="black", linestyle="--", linewidth=0.8)
        left.axvline(options.low, color="black", linestyle=":", linewidth=0.8)
        left.set_title(f"selectivity: {len(values)} units, {int(sel.dead.sum())} dead", fontsize=10)
    else:
        left.text(0.5, 0.5, "no selectivity", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("class selectivity")
    left.set_ylabel("units")
    methods = [m for m in data.methods if (layer, m) in data.rows]
    for method in methods:
        _, _, rs = data.included(layer, method)
        right.hist(
            rs, bins=np.linspace(0, 1, 21), histtype="step", linewidth=1.5,
            color=METHOD_COLOURS.get(method, "tab:green"), label=f"{method.upper()} ({len(rs)} included)",
        )  # fmt: skip
    if methods:
        right.legend()
    else:
        right.text(0.5, 0.5, "no RS", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("RS (fraction of the layer more active)")
    fig.suptitle(_layer_title(data, layer), fontsize=11)
    return _save(fig, path)


@dataclass
class GridChoice:
    """The Figure-2 unit: its layer, unit, method (IAM, or AM if the run has no IAM) and what was shown."""

    layer: str
    unit: int
    method: str
    selectivity: float
    rs: float
    higher: list[int]  # units whose activation on the unit's image is strictly higher, most active first
    shown_missing: list[int]  # of those shown, the units with no image in the run


def parse_unit(text: str) -> tuple[str, int]:
    """'conv3:17' -> ('conv3', 17)."""
    layer, sep, unit = text.rpartition(":")
    if not sep or not layer or not unit.strip().isdigit():
        raise UsageError(f"--unit {text!r}: expected LAYER:UNIT, e.g. conv3:17")
    return layer, int(unit)


def choose_grid_unit(data: RunData, options: StatsOptions, unit: str | None) -> tuple[str, int, str] | None:
    """The unit for Figure 2: `unit` ('LAYER:UNIT') if given, else the most selective included IAM unit
    with RS > 0, preferring post-ReLU layers and units at or above the high threshold; None if the run
    has no IAM/AM."""
    method = "iam" if "iam" in data.methods else ("am" if "am" in data.methods else None)
    if unit is not None:
        layer, index = parse_unit(unit)
        rows = data.rows.get((layer, method)) if method else None
        if rows is None or index not in rows.indices:
            raise RunError(f"{data.run.uri} has no IAM or AM image of unit {layer}:{index}")
        return layer, index, method
    if method is None:
        return None
    candidates = []
    for info in data.layers:
        units, x, y = data.included(info.name, method)
        for u, s, r in zip(units.tolist(), x.tolist(), y.tolist(), strict=True):
            # Preferred, in order: substitutes exist, a post-ReLU layer, high selectivity, the most selective.
            candidates.append(((r > 0, not info.signed, s >= options.high, s), info.name, u))
    if not candidates:
        first = next((key for key in data.rows if key[1] == method), None)
        return None if first is None else (first[0], int(data.rows[first].indices[0]), method)
    _, layer, index = max(candidates, key=lambda c: c[0])
    return layer, index, method


def _unit_rows(data: RunData, layer: str, method: str, units: list[int], columns: list[str]) -> pa.Table:
    where = (ds.field("layer") == layer) & (ds.field("method") == method) & ds.field("unit").isin(units)
    table, _ = read_rows(
        data.run, "units", ["layer", "method", "unit", *columns], ["layer", "method", "unit"], where
    )
    return table


def substitution_grid(
    data: RunData, layer: str, unit: int, method: str, path: Path
) -> tuple[Path, GridChoice]:
    """Figure 2: the unit's image, then the images of the units more active on it, with their activations."""
    own_row = _unit_rows(data, layer, method, [unit], ["layer_activations", "rs"])
    acts = np.asarray(own_row.column("layer_activations")[0].as_py(), dtype=np.float64)
    own = acts[unit]
    higher = [int(j) for j in np.argsort(-acts, kind="stable") if acts[j] > own]
    shown = higher[:GRID_MAX_SUBSTITUTES]
    # Only the images shown are read: a whole layer's images can be hundreds of MB (VGG16 fc6).
    pictures = _unit_rows(data, layer, method, [unit, *shown], ["image"])
    images = dict(zip(pictures.column("unit").to_pylist(), pictures.column("image").to_pylist(), strict=True))
    sel = data.selectivity.get(layer)
    sel_of = dict(zip(sel.indices.tolist(), sel.selectivity.tolist(), strict=True)) if sel else {}
    panels = [unit, *shown]
    rows = math.ceil(len(panels) / GRID_COLUMNS)
    columns = min(len(panels), GRID_COLUMNS)
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    missing = []
    for ax, j in zip(axes, panels, strict=False):
        if images.get(j) is not None:
            ax.imshow(decode_png(images[j]))
        else:
            missing.append(j)
            ax.set_facecolor("0.85")
            ax.text(0.5, 0.5, "no image\nin run", ha="center", va="center", transform=ax.transAxes)
        label = "unit" if j == unit else "higher"
        ax.set_title(f"{label} {j}\nact {acts[j]:.3g}, sel {sel_of.get(j, math.nan):.2f}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    rs = float(own_row.column("rs")[0].as_py())
    more = f" (first {len(shown)} shown)" if len(higher) > len(shown) else ""
    fig.suptitle(
        f"{layer} unit {unit}, {method.upper()} image: {len(higher)} of {len(acts)} units respond more "
        f"(RS {rs:.3f}){more}",
        fontsize=10,
    )
    choice = GridChoice(layer, unit, method, sel_of.get(unit, math.nan), rs, higher, missing)
    return _save(fig, path), choice
