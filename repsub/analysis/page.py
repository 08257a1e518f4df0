"""The report page: one self-contained HTML file (figures, data, style and script inline; no network).

Sections: the run's facts, what it lacks, the statistics table, importance by ablation (its table and
figures, for a run with an importance table), the interpretability index, the bands of activation (units with
mid-range associations, per layer), the unit explorer (filters, a scatter of RS against
selectivity whose points open their unit, a gallery of thumbnails a page at a time, a unit's detail in a
dialog; explorer.js), then the paper's figures.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pyarrow as pa

from repsub.analysis.bands import BAND_STRIP, mid_range_by_layer
from repsub.analysis.bases_side_by_side import LEGEND as BASES_LEGEND
from repsub.analysis.bases_side_by_side import ExplorerBases
from repsub.analysis.exclusion import IMPORTANCE_REASONS, INTERPRETABILITY_REASONS, REASONS
from repsub.analysis.figures import GridChoice
from repsub.analysis.importance import MEASURES
from repsub.analysis.importance_stats import IMPORTANCE_STATS_FILE, against_label, against_names
from repsub.analysis.interpretability import kind_label
from repsub.analysis.interpretability_stats import INTERPRETABILITY_STATS_FILE
from repsub.analysis.layers import SIGNED_NOTE, class_names
from repsub.analysis.load import RunData
from repsub.analysis.stats import StatsOptions, left_out
from repsub.core.band_ranges import BAND_NAMES
from repsub.errors import visible
from repsub.runstore.tables import UNIT_STATUSES


def esc(text) -> str:
    """HTML-escaped, invisible characters shown as escapes (a right-to-left override in a name would reverse
    what follows it on the page)."""
    return html.escape(visible(text))


# Columns of the statistics table: (stats column, header, tooltip).
TABLE_COLUMNS = [
    ("method", "method", ""),
    ("units", "units", "selectivity rows of the layer"),
    ("dead", "dead", "units whose class means are all zero"),
    ("mean_selectivity", "mean sel.", "over alive units"),
    ("median_selectivity", "median sel.", "over alive units"),
    ("n_high", "high sel.", "alive units with selectivity >= the high threshold"),
    ("n_low", "low sel.", "alive units with selectivity <= the low threshold"),
    ("units_rs", "RS rows", "units of the method with an RS row"),
    ("n_included", "included", "units in mean/median RS and Spearman rho"),
    ("left_out", "left out", "RS rows left out of the statistics, by reason"),
    ("mean_rs", "mean RS", "over the included units"),
    ("median_rs", "median RS", "over the included units"),
    ("spearman_rho", "Spearman rho", "rank correlation of RS with selectivity, included units"),
    ("spearman_p", "p", "scipy's p-value of rho"),
    ("rho_ci", "95% CI", "percentile bootstrap interval of rho"),
]
CATEGORY_COLOURS = {  # as explorer.js: the category of a units row, included or the reason it is left out
    "included": "#1f77b4",
    "dead": "#7f7f7f",
    "no_response": "#e6550d",
    "nonfinite": "#d62728",
    "no_selectivity": "#9467bd",
    "nan_selectivity": "#8c564b",
}


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="figure" src="data:image/png;base64,{encoded}" alt="{esc(alt)}">'


def _fmt(value, column: str) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.2g}" if column == "spearman_p" else f"{value:.3f}"
    return esc(str(value))


def _left_out_cell(row: dict) -> str:
    if row.get("units_rs") is None:
        return "<td>&ndash;</td>"
    reasons = left_out(row)
    total = sum(reasons.values())
    parts = ", ".join(f"{reason.replace('_', ' ')} {count}" for reason, count in reasons.items())
    title = "; ".join(f"{reason}: {count} ({REASONS[reason]})" for reason, count in reasons.items())
    text = f"{total}" + (f": {esc(parts)}" if parts else "")
    return f'<td class="left-out" title="{esc(title)}">{text}</td>'


def stats_table(stats: pa.Table, data: RunData) -> str:
    head = "".join(
        f'<th title="{esc(tip)}" scope="col">{esc(h)}</th>'
        for _, h, tip in [("layer", "layer", ""), *TABLE_COLUMNS]
    )
    body = []
    for row in stats.to_pylist():
        row = dict(row)
        row["rho_ci"] = (
            None
            if row.get("rho_ci_low") is None or math.isnan(row["rho_ci_low"])
            else f"[{row['rho_ci_low']:.3f}, {row['rho_ci_high']:.3f}]"
        )
        signed = data.layer(row["layer"]).signed
        method_index = data.methods.index(row["method"]) if row["method"] in data.methods else ""
        link = (
            f'<a class="layer-link" href="#explorer" data-filter-layer="{data.layers.index(data.layer(row["layer"]))}"'
            f' data-filter-method="{method_index}">{esc(row["layer"])}</a>'
        )
        layer = link + (' <span class="mark" title="signed values">&dagger;</span>' if signed else "")
        cells = [f'<th scope="row">{layer}</th>'] + [
            _left_out_cell(row) if c == "left_out" else f"<td>{_fmt(row.get(c), c)}</td>"
            for c, _, _ in TABLE_COLUMNS
        ]
        attrs = f'data-layer="{esc(row["layer"])}" data-method="{esc(row["method"] or "")}"'
        body.append(f"<tr {attrs}{' class=signed' if signed else ''}>{''.join(cells)}</tr>")
    if not body:
        return '<p id="layer-stats" class="empty">The run has no selectivity or units rows yet.</p>'
    return f'<table id="layer-stats"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def bases_section(lines: list[dict] | None, figure: Path | None = None) -> list[str]:
    """The units and each basis side by side, per layer (repsub.analysis.bases_side_by_side), and `figure`
    (rho by depth, a line per basis and method); nothing for a run of units only."""
    if not lines:
        return []
    columns = list(dict.fromkeys(key for line in lines for key in line))
    head = "".join(f'<th scope="col">{esc(column)}</th>' for column in columns)
    body = "".join(
        f'<tr data-layer="{esc(line["layer"])}" data-basis="{esc(line["basis"])}">'
        + "".join(f"<td>{_fmt(line.get(column), column)}</td>" for column in columns)
        + "</tr>"
        for line in lines
    )
    return [
        '<h2 id="bases">Bases side by side</h2>',
        f'<table id="bases-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
        f'<p class="small">{esc(BASES_LEGEND)}. Each basis is read on its own (no row of one basis enters '
        "another's numbers); the tables, figures and details below are the units'.</p>",
        *([_img(figure, "Spearman rho against layer depth, per basis and method")] if figure else []),
    ]


def _ci(low, high) -> str:
    return "&ndash;" if low is None or math.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def importance_table(importance: pa.Table, data: RunData) -> str:
    """One row per layer, ablation and measure; per relation (against): rho, its interval, the units in it."""
    againsts = against_names(data)
    head = ['<th scope="col">layer</th><th scope="col">ablation</th>',
            '<th scope="col" title="accuracy_drop: the importance; loss_increase: the finer second measure">measure</th>',
            '<th scope="col" title="importance rows of the layer and ablation">units</th>',
            '<th scope="col" title="images of the measurement">images</th>',
            '<th scope="col" title="accuracy of the intact network on those images">baseline acc.</th>',
            *(f'<th scope="col" colspan="3">vs {esc(against_label(a))}</th>' for a in againsts)]  # fmt: skip
    sub = "<th></th>" * 6 + "".join(
        '<th scope="col" title="Spearman rho of importance with it (hover: p-value)">rho</th>'
        '<th scope="col" title="percentile bootstrap interval of rho">95% CI</th>'
        '<th scope="col" title="units in rho; hover: the others by reason">n</th>'
        for _ in againsts
    )
    grouped: dict[tuple, dict[str, dict]] = {}
    for row in importance.to_pylist():
        grouped.setdefault((row["layer"], row["ablation"], row["measure"]), {})[row["against"]] = row
    body = []
    for (layer, ablation, measure), by_against in grouped.items():
        first = next(iter(by_against.values()))
        cells = [f'<th scope="row">{esc(layer)}</th><td>{esc(ablation)}</td>',
                 f'<td title="{esc(MEASURES[measure])}">{esc(measure.replace("_", " "))}</td>',
                 f"<td>{first['units']}</td><td>{first['n_images']}</td>",
                 f"<td>{_fmt(first['baseline_accuracy'], '')}</td>"]  # fmt: skip
        for against in againsts:
            row = by_against.get(against)
            if row is None:
                cells.append("<td>&ndash;</td>" * 3)
                continue
            out = {r: row[f"excluded_{r}"] for r in IMPORTANCE_REASONS if row[f"excluded_{r}"]}
            why = "; ".join(f"{r}: {n} ({IMPORTANCE_REASONS[r]})" for r, n in out.items()) or "none left out"
            cells.append(
                f'<td title="p = {_fmt(row["spearman_p"], "spearman_p")}">{_fmt(row["spearman_rho"], "")}</td>'
                f"<td>{_ci(row['rho_ci_low'], row['rho_ci_high'])}</td>"
                f'<td class="left-out" title="{esc(why)}">{row["n_included"]}'
                + (f" ({sum(out.values())} out)" if out else "")
                + "</td>"
            )
        attrs = f'data-layer="{esc(layer)}" data-ablation="{esc(ablation)}" data-measure="{esc(measure)}"'
        body.append(f"<tr {attrs}>{''.join(cells)}</tr>")
    return (
        f'<table id="importance-stats"><thead><tr>{"".join(head)}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def importance_section(importance: pa.Table | None, data: RunData, figures: dict) -> list[str]:
    """The importance statistics and their figures; nothing for a run without importance."""
    if importance is None:
        return []
    out = [
        '<h2 id="importance">Importance by ablation</h2>',
        "<p>A unit's <em>importance</em> is its <strong>accuracy drop</strong>: the network's accuracy minus "
        "its accuracy with the unit ablated (zero: its output set to 0; mean: to its mean over the data); "
        "<em>loss increase</em> is the mean cross-entropy gained, the finer second measure. Spearman rho of "
        "importance with the unit's RS (AM, IAM) and with its selectivity, over the units the RS statistics "
        "include (for selectivity: alive, finite); hover a count for the units left out and why. All rows: "
        f"<code>{IMPORTANCE_STATS_FILE}</code>.</p>",
        importance_table(importance, data),
    ]
    for against, path in figures.get("importance", {}).items():
        out.append(_img(path, f"Spearman rho of importance against {against_label(against)} by layer depth"))
    return out


def _relation_cells(row: dict | None, reasons: dict[str, str]) -> str:
    """rho (hover: p), its interval and the units in it (hover: the others by reason) of one relation row."""
    if row is None:
        return "<td>&ndash;</td>" * 3
    out = {r: row[f"excluded_{r}"] for r in reasons if row[f"excluded_{r}"]}
    why = "; ".join(f"{r}: {n} ({reasons[r]})" for r, n in out.items()) or "none left out"
    return (
        f'<td title="p = {_fmt(row["spearman_p"], "spearman_p")}">{_fmt(row["spearman_rho"], "")}</td>'
        f"<td>{_ci(row['rho_ci_low'], row['rho_ci_high'])}</td>"
        f'<td class="left-out" title="{esc(why)}">{row["n_included"]}'
        + (f" ({sum(out.values())} out)" if out else "")
        + "</td>"
    )


def interpretability_table(index_stats: pa.Table, data: RunData) -> str:
    """One row per layer and similarity: units, mean index; per relation: rho, its interval, the units in it."""
    againsts = against_names(data)
    head = ['<th scope="col">layer</th><th scope="col">similarity</th>',
            '<th scope="col" title="index rows of the layer">units</th>',
            '<th scope="col" title="mean 2AFC index over the units with a finite one (0.5: chance)">mean index</th>',
            *(f'<th scope="col" colspan="3">vs {esc(against_label(a))}</th>' for a in againsts)]  # fmt: skip
    sub = "<th></th>" * 4 + "".join(
        '<th scope="col" title="Spearman rho of the index with it (hover: p-value)">rho</th>'
        '<th scope="col" title="percentile bootstrap interval of rho">95% CI</th>'
        '<th scope="col" title="units in rho; hover: the others by reason">n</th>'
        for _ in againsts
    )
    grouped: dict[tuple, dict[str, dict]] = {}
    for row in index_stats.to_pylist():
        grouped.setdefault((row["layer"], row["similarity"], row["variant"]), {})[row["against"]] = row
    body = []
    for (layer, similarity, variant), by_against in grouped.items():
        first = next(iter(by_against.values()))
        cells = [f'<th scope="row">{esc(layer)}</th><td>{esc(kind_label(similarity, variant))}</td>',
                 f"<td>{first['units']}</td><td>{_fmt(first['mean_index'], '')}</td>"]  # fmt: skip
        cells += [_relation_cells(by_against.get(a), INTERPRETABILITY_REASONS) for a in againsts]
        attrs = f'data-layer="{esc(layer)}" data-similarity="{esc(similarity)}" data-variant="{esc(variant)}"'
        body.append(f"<tr {attrs}>{''.join(cells)}</tr>")
    return (
        f'<table id="interpretability-stats"><thead><tr>{"".join(head)}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def interpretability_section(index_stats: pa.Table | None, data: RunData, figures: dict) -> list[str]:
    """The interpretability index per layer and its relations; nothing for a run without the index."""
    if index_stats is None:
        return []
    out = [
        '<h2 id="interpretability">Interpretability index</h2>',
        "<p>The simulated two-alternative forced choice of Klindt et al. (2023) on each unit's exemplars: "
        "the probability that an observer comparing two query images with the unit's top and bottom "
        "exemplars tells which query is the top one (0.5 chance, 1 always right), per similarity. Mean over "
        "the layer's units, and Spearman rho of the index with the unit's RS (AM, IAM) and selectivity over "
        "the units the RS statistics include (for selectivity: alive, finite); hover a count for the units "
        f"left out and why. All rows: <code>{INTERPRETABILITY_STATS_FILE}</code>.</p>",
        interpretability_table(index_stats, data),
    ]
    if figures.get("index_depth"):
        out.append(_img(figures["index_depth"], "mean interpretability index by layer depth"))
    for against, path in figures.get("interpretability", {}).items():
        out.append(_img(path, f"Spearman rho of the index against {against_label(against)} by layer depth"))
    return out


def bands_section(bands: dict | None, data: RunData) -> list[str]:
    """Per layer: the units with bands and those with a mid-range association, the first of them named;
    nothing for a run without bands."""
    if bands is None:
        return []
    names = class_names(data.run.manifest)

    def label(c) -> str:
        return esc(names[c]) if names and 0 <= c < len(names) else f"class {c}"

    rows = []
    for layer, entry in mid_range_by_layer(bands).items():
        named = "; ".join(
            f"unit {unit}: "
            + ", ".join(f"{esc(BAND_NAMES[b])} {label(c)}" for b, c in mid)
            + f" (top band {label(top)})"
            for unit, mid, top in entry["named"]
        )
        more = entry["with_mid"] - len(entry["named"])
        rows.append(
            f'<tr data-layer="{esc(layer)}"><th scope="row">{esc(layer)}</th><td>{entry["units"]}</td>'
            f'<td>{entry["with_mid"]}</td><td class="small">{named or "&ndash;"}'
            + (f" and {more} more" if more > 0 else "")
            + "</td></tr>"
        )
    return [
        '<h2 id="bands">Bands of activation</h2>',
        "<p>Each unit's activation over the data, cut at its quantiles into bands ("
        + esc(", ".join(BAND_NAMES))
        + "): the images of each band per class, and a seeded sample of them. A <em>mid-range association</em> "
        "is a band between the bottom and the top band whose most frequent class is not the top band's: the "
        "unit responds moderately to another class than the one that drives it most. A unit's detail (Units, "
        f"below) shows its bands: the first {BAND_STRIP} sampled images of each, its classes with their lift "
        "(share in the band / share in the data) and entropy. All of it in Python: "
        "<code>repsub.open_run(RUN).bands(layer, unit)</code>.</p>",
        '<table id="band-stats"><thead><tr><th scope="col">layer</th>'
        '<th scope="col" title="units of the bands table">units</th>'
        '<th scope="col" title="units with at least one mid-range association">mid-range</th>'
        '<th scope="col">mid-range associations (band, its top class)</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>",
    ]


def _options(values: list[tuple[str, str]], label_all: str | None = "all") -> str:
    options = [f'<option value="">{esc(label_all)}</option>'] if label_all else []
    return "".join(options + [f'<option value="{esc(v)}">{esc(text)}</option>' for v, text in values])


def _legend() -> str:
    items = [("included", "included in the statistics (status ok)")] + [
        (reason, f"left out: {reason.replace('_', ' ')}") for reason in REASONS
    ]
    return (
        '<ul class="legend" id="category-legend" aria-label="colours of the units">'
        + "".join(
            f'<li title="{esc(REASONS.get(key, ""))}"><span class="swatch" style="background:{CATEGORY_COLOURS[key]}">'
            f"</span>{esc(text)}</li>"
            for key, text in items
        )
        + "</ul>"
    )


def explorer_section(
    data: RunData, data_json: str | None, thumbs_json: str | None, exemplars_json: str | None, thumb_side: int,
    choices: ExplorerBases | None = None,
) -> str:  # fmt: skip
    """The unit explorer's markup and its data; the script comes at the end of the page. `choices`: with
    bases, the basis filter and every basis's layers and ablations."""
    if data_json is None:
        return '<p class="empty" id="explorer-empty">The run has no AM/IAM results: no units to explore.</p>'
    layer_infos = choices.layers if choices else data.layers
    layers = [
        (str(i), info.name + (" (signed)" if info.signed else "")) for i, info in enumerate(layer_infos)
    ]
    basis_filter = (
        f'\n  <label>basis <select id="f-basis">{_options([(str(i), b) for i, b in enumerate(choices.names)])}'
        "</select></label>"
        if choices
        else ""
    )
    methods = [(str(i), m.upper()) for i, m in enumerate(data.methods)]
    statuses = [(s, s.replace("_", " ")) for s in UNIT_STATUSES]
    stats_choices = [("included", "included"), ("left_out", "left out (any reason)")] + [
        (r, f"left out: {r.replace('_', ' ')}") for r in REASONS
    ]
    sorts = [("layer", "layer and unit"), ("rs", "RS"), ("selectivity", "selectivity"),
             ("activation", "own activation"), ("rs_ties", "rs_ties")]  # fmt: skip
    importance = ""
    ablation_names = choices.ablations if choices else data.importance.ablations if data.importance else []
    if ablation_names:
        sorts += [("importance", "importance (accuracy drop)"), ("loss_increase", "loss increase")]
        ablations = [(a, f"{a} ablation") for a in ablation_names]
        importance = f"""
  <label>importance of <select id="f-ablation">{_options(ablations, None)}</select></label>
  <fieldset><legend>importance (accuracy drop)</legend>
    <label>min <input id="f-imp-min" type="number" step="0.001" inputmode="decimal"></label>
    <label>max <input id="f-imp-max" type="number" step="0.001" inputmode="decimal"></label>
  </fieldset>"""
    return f"""
<p class="small">Every units row (a unit of a layer, with one method's image). Filter and sort them; click a
card or a point of the scatter (or press Enter on a focused card) to see the unit: its AM and IAM images,
selectivity, largest class means, RS and status{", and its importance by ablation" if importance else ""}, and
with exemplars its top and bottom dataset images and interpretability index, with bands its images and classes by
band of activation.
Thumbnails are {thumb_side} px.</p>
<form id="filters" role="search" aria-label="filter the units">
  <label>layer <select id="f-layer">{_options(layers)}</select></label>{basis_filter}
  <label>method <select id="f-method">{_options(methods)}</select></label>
  <label>status <select id="f-status">{_options(statuses, "any")}</select></label>
  <label>in statistics <select id="f-stats">{_options(stats_choices, "any")}</select></label>
  <fieldset><legend>RS (0 to 1)</legend>
    <label>min <input id="f-rs-min" type="number" step="0.01" min="0" max="1" inputmode="decimal"></label>
    <label>max <input id="f-rs-max" type="number" step="0.01" min="0" max="1" inputmode="decimal"></label>
  </fieldset>
  <fieldset><legend>selectivity</legend>
    <label>min <input id="f-sel-min" type="number" step="0.01" inputmode="decimal"></label>
    <label>max <input id="f-sel-max" type="number" step="0.01" inputmode="decimal"></label>
  </fieldset>{importance}
  <label>sort by <select id="f-sort">{_options(sorts, None)}</select></label>
  <label>order <select id="f-order"><option value="asc">ascending</option>
    <option value="desc">descending</option></select></label>
  <label>per page <select id="f-page-size"><option>60</option><option selected>120</option>
    <option>240</option></select></label>
  <button type="button" id="f-reset">reset</button>
</form>
<p id="match-count" aria-live="polite"></p>
{_legend()}
<div class="explorer-body">
  <figure>
    <canvas id="scatter" width="720" height="380" role="img"
      aria-label="RS against selectivity of the matching units; the gallery below lists the same units"></canvas>
    <figcaption><span id="scatter-caption"></span> <span id="scatter-hover" class="small"></span></figcaption>
  </figure>
  <nav class="pager" aria-label="gallery pages">
    <button type="button" id="prev-page">previous page</button><span id="page-label"></span>
    <button type="button" id="next-page">next page</button>
  </nav>
  <ul id="gallery" aria-label="units"></ul>
</div>
<dialog id="unit-detail" aria-labelledby="detail-title">
  <h3 id="detail-title"></h3>
  <p id="detail-layer" class="small"></p>
  <div id="detail-images"></div>
  <h4>Selectivity</h4>
  <div id="detail-selectivity"></div>
  <h4 id="detail-means-title"></h4>
  <div id="detail-means"></div>
  <div id="detail-importance"></div>
  <div id="detail-exemplars"></div>
  <div id="detail-bands"></div>
  <p id="detail-note" class="small"></p>
  <div class="detail-nav">
    <button type="button" id="detail-prev">previous unit</button>
    <button type="button" id="detail-next">next unit</button>
    <button type="button" id="detail-close">close</button>
  </div>
</dialog>
<script type="application/json" id="explorer-data">{data_json}</script>
<script type="application/json" id="explorer-thumbs">{thumbs_json}</script>
<script type="application/json" id="exemplar-thumbs">{exemplars_json or "[]"}</script>"""


def _facts(data: RunData, options: StatsOptions) -> dict[str, str]:
    manifest = data.run.manifest
    model = manifest.get("model") or {}
    invariants = manifest.get("invariants") or {}
    return {
        "run": data.run.uri,
        "model": f"{model.get('model', '?')} (weights {model.get('weights', '?')}, "
        f"{model.get('num_classes', '?')} classes)",
        "layers": f"{len(data.layers)} with results, of {len(data.catalog) or '?'} in the catalog "
        f"(from the {data.catalog_source})",
        "spatial reduction": str(invariants.get("reduce", "not recorded (mean before it was recorded)")),
        "commands": ", ".join(sorted(manifest.get("commands", {}))) or "none",
        "code version": manifest.get("code_version", "?"),
        "report written": datetime.now(UTC).isoformat(timespec="seconds"),
        "thresholds": f"high selectivity >= {options.high}, low selectivity <= {options.low}",
        "bootstrap": f"{options.resamples} resamples of units, seed {options.seed}, "
        f"{round(100 * options.confidence)}% percentile interval",
        "statistics over": "alive units whose optimization drove them (status ok) with finite selectivity "
        "and RS; the others are counted as left out, by reason",
    }


def render_page(
    data: RunData,
    stats: pa.Table,
    options: StatsOptions,
    figures: dict,
    explorer: tuple[str, str, str] | None,
    thumb_side: int,
    importance: pa.Table | None = None,
    index_stats: pa.Table | None = None,
    bases: list[dict] | None = None,
    explorer_choices: ExplorerBases | None = None,
    bands: dict | None = None,
) -> str:
    """The whole page. `figures`: {'depth': path|None, 'grid': (path, GridChoice)|None, 'scatter': {layer:
    path}, 'hist': {layer: path}, 'importance': {against: path}}; `explorer`: the two JSON documents of
    repsub.analysis.explorer or None; `importance`: the importance statistics, `index_stats` the
    interpretability statistics, `bands` the band summaries (repsub.analysis.bands), None without; `bases`: the bases side by side
    (repsub.analysis.bases_side_by_side), empty or None for a run of units only; `explorer_choices`: the
    explorer's basis filter and the layers and ablations of every basis (None: the units' only)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>repsub report: {esc(data.run.uri)}</title><style>{_asset('report.css')}</style></head><body>",
        "<h1>Representative Substitution report</h1>",
        '<dl class="facts">'
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in _facts(data, options).items())
        + "</dl>",
        '<h2>Coverage</h2><ul class="notes" id="coverage">',
        *(
            [f"<li>{esc(n)}</li>" for n in data.coverage.notes]
            or ["<li>complete: every layer and unit, AM and IAM</li>"]
        ),
        "</ul>",
        "<h2>Per-layer statistics</h2>",
        stats_table(stats, data),
        f'<p class="small">&dagger; {esc(SIGNED_NOTE)}: the thresholds and the selectivity axis mean less '
        "there. Mean and median RS and Spearman rho are over the <em>included</em> units; the others are "
        "<em>left out</em>, each for the first of these reasons that applies:</p>",
        '<dl class="facts small" id="reasons">'
        + "".join(f"<dt>{esc(r.replace('_', ' '))}</dt><dd>{esc(text)}</dd>" for r, text in REASONS.items())
        + "</dl>",
        *bases_section(bases, figures.get("bases_depth")),
        *importance_section(importance, data, figures),
        *interpretability_section(index_stats, data, figures),
        *bands_section(bands, data),
        '<h2 id="explorer">Units</h2>',
        explorer_section(data, *(explorer or (None, None, None)), thumb_side, explorer_choices),
        "<h2>Spearman rho against layer depth</h2>",
        _img(figures["depth"], "Spearman rho against layer depth") if figures["depth"] else _none("RS"),
        "<h2>RS against selectivity</h2>",
        *(_img(path, f"RS against selectivity, {layer}") for layer, path in figures["scatter"].items()),
    ]
    if not figures["scatter"]:
        out.append(_none("RS and selectivity of the same units"))
    out.append("<h2>Units substituting a high-selectivity unit</h2>")
    out += _grid(figures["grid"])
    out.append("<h2>Histograms</h2>")
    out += [_img(path, f"histograms, {layer}") for layer, path in figures["hist"].items()] or [_none("rows")]
    if explorer is not None:
        out.append(f"<script>{_asset('explorer.js')}</script>")
    out.append("</body></html>")
    return "\n".join(out)


def _grid(grid: tuple[Path, GridChoice] | None) -> list[str]:
    if not grid:
        return [_none("IAM or AM images")]
    path, choice = grid
    from repsub.selection import ranges_text

    out = [
        f"<p>{esc(choice.layer)} unit {choice.unit} (selectivity {choice.selectivity:.3f}, RS {choice.rs:.3f}): "
        f"its {choice.method.upper()} image, then the {choice.method.upper()} images of the units whose "
        "activation on it is strictly higher, most active first.</p>"
    ]
    if choice.shown_missing:
        out.append(f"<p>No image in the run for unit(s) {esc(ranges_text(choice.shown_missing, ', '))}.</p>")
    out.append(_img(path, f"substitution grid, {choice.layer} unit {choice.unit}"))
    return out


def _none(what: str) -> str:
    return f'<p class="empty">The run has no {esc(what)} to draw.</p>'
