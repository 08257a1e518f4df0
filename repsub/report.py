"""`repsub report RUN`: the paper's statistics and figures from a run's tables, as one offline HTML page.

Writes into DIR (default RUN/report for a local run):

    DIR/stats.parquet     one row per layer and method (see repsub.report_stats for the definitions)
    DIR/figures/*.png     the figures (see repsub.report_figures)
    DIR/report.html       self-contained: the figures embedded as base64, no external resource

A partial run is reported as far as it goes, with the layers and units it lacks listed; a run
without a units table gets its selectivity figures.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError, UsageError
from .report_figures import (
    LOGITS_NOTE,
    choose_grid_unit,
    histograms,
    rho_vs_depth,
    rs_vs_selectivity,
    safe_name,
    substitution_grid,
)
from .report_stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    DEFAULT_SEED,
    HIGH_SELECTIVITY,
    LOW_SELECTIVITY,
    RunData,
    StatsOptions,
    format_ranges,
    layer_method_stats,
    load_run_data,
    open_report_run,
    stats_metadata,
)

STATS_FILE = "stats.parquet"
HTML_FILE = "report.html"
FIGURES_DIR = "figures"

# Columns of the HTML table: (stats column, header).
TABLE_COLUMNS = [
    ("method", "method"),
    ("units", "units"),
    ("dead", "dead"),
    ("mean_selectivity", "mean sel."),
    ("median_selectivity", "median sel."),
    ("n_high", "high sel."),
    ("n_low", "low sel."),
    ("units_rs", "units w/ RS"),
    ("mean_rs", "mean RS"),
    ("median_rs", "median RS"),
    ("n_spearman", "n (rho)"),
    ("excluded", "excluded"),
    ("spearman_rho", "Spearman rho"),
    ("spearman_p", "p"),
    ("rho_ci", "95% CI"),
]


def default_out(run_uri: str | os.PathLike) -> Path:
    """RUN/report for a local run; a run at a URI needs an explicit output directory."""
    text = os.fspath(run_uri)
    if "://" in text and not text.startswith("file://"):
        raise UsageError(f"{text} is not a local directory: give --out for the report")
    return Path(text.removeprefix("file://")) / "report"


def write_report(
    run_uri: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    high: float = HIGH_SELECTIVITY,
    low: float = LOW_SELECTIVITY,
    seed: int = DEFAULT_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
    unit: str | None = None,
) -> Path:
    """Write stats.parquet, the figures and report.html of the run at `run_uri` into `out_dir`.

    `unit` ('LAYER:UNIT') picks the Figure-2 unit; by default the most selective IAM unit that other
    units substitute (RS > 0). Returns the path of report.html. Raises RunError for a path holding
    no run, a run of another schema version or unreadable tables.
    """
    return build_report(run_uri, out_dir, high=high, low=low, seed=seed, resamples=resamples, unit=unit)[0]


def build_report(
    run_uri: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    high: float = HIGH_SELECTIVITY,
    low: float = LOW_SELECTIVITY,
    seed: int = DEFAULT_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
    unit: str | None = None,
) -> tuple[Path, RunData, pa.Table]:
    """write_report, also returning the run's data (with its coverage) and the statistics table."""
    options = StatsOptions(high=high, low=low, seed=seed, resamples=resamples)
    options.validate()
    out = Path(out_dir) if out_dir is not None else default_out(run_uri)
    run = open_report_run(run_uri)
    data = load_run_data(run)
    stats = layer_method_stats(data, options)
    grid_unit = choose_grid_unit(data, options, unit)  # a bad --unit fails before anything is written
    try:
        (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create the report directory {out}: {err}") from err
    for old in (out / FIGURES_DIR).glob("fig*.png"):  # figures of layers no longer in the run
        old.unlink()
    table = stats.replace_schema_metadata(stats_metadata(data, options))
    _write_atomic(out / STATS_FILE, lambda p: pq.write_table(table, p))
    figures = _draw_figures(data, stats, options, grid_unit, out / FIGURES_DIR)
    page = render_html(data, stats, options, figures)
    _write_atomic(out / HTML_FILE, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return out / HTML_FILE, data, stats


def _write_atomic(path: Path, write) -> None:
    staged = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(str(staged))
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)


def _draw_figures(
    data: RunData, stats: pa.Table, options: StatsOptions, grid_unit: tuple | None, folder: Path
) -> dict:
    """{'depth': path|None, 'grid': (path, GridChoice)|None, 'scatter': {layer: path}, 'hist': {layer: path}}."""
    figures: dict = {"scatter": {}, "hist": {}, "grid": None}
    figures["depth"] = rho_vs_depth(data, stats, folder / "fig2_rho_vs_depth.png")
    for info in data.layers:
        name = safe_name(info.name)
        path = rs_vs_selectivity(data, info.name, options, folder / f"fig1_rs_vs_selectivity_{name}.png")
        if path is not None:
            figures["scatter"][info.name] = path
        figures["hist"][info.name] = histograms(data, info.name, options, folder / f"fig4_hist_{name}.png")
    if grid_unit is not None:
        layer, index, method = grid_unit
        figures["grid"] = substitution_grid(
            data, layer, index, method, folder / f"fig3_grid_{safe_name(layer)}_{index}.png"
        )
    return figures


def _img(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _fmt(value, column: str) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.2g}" if column == "spearman_p" else f"{value:.3f}"
    return html.escape(str(value))


def _table(stats: pa.Table) -> str:
    head = "".join(f"<th>{h}</th>" for h in ["layer", *(h for _, h in TABLE_COLUMNS)])
    body = []
    for row in stats.to_pylist():
        row = dict(row)
        parts = [row.get(c) for c in ("excluded_dead", "excluded_nan", "unmatched")]
        row["excluded"] = None if parts[0] is None else sum(parts)
        row["rho_ci"] = (
            None
            if row.get("rho_ci_low") is None or math.isnan(row["rho_ci_low"])
            else f"[{row['rho_ci_low']:.3f}, {row['rho_ci_high']:.3f}]"
        )
        logits = row["after_relu"] is False
        layer = html.escape(row["layer"]) + (
            ' <span class="mark" title="logits">&dagger;</span>' if logits else ""
        )
        title = (
            f' title="dead {parts[0]}, NaN {parts[1]}, no selectivity row {parts[2]}"'
            if row["excluded"] is not None
            else ""
        )
        cells = [f"<td>{layer}</td>"] + [
            f"<td{title if c == 'excluded' else ''}>{_fmt(row.get(c), c)}</td>" for c, _ in TABLE_COLUMNS
        ]
        attrs = f'data-layer="{html.escape(row["layer"])}" data-method="{html.escape(row["method"] or "")}"'
        body.append(f"<tr {attrs}{' class=logits' if logits else ''}>{''.join(cells)}</tr>")
    return (
        f'<table id="layer-stats"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        if body
        else '<p id="layer-stats" class="empty">The run has no selectivity or units rows yet.</p>'
    )


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
tr.logits { background: #fff6e0; } .mark { color: #b35c00; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.notes li { color: #8a4b00; } dl { display: grid; grid-template-columns: max-content auto; gap: 0 1em; }
"""


def render_html(data: RunData, stats: pa.Table, options: StatsOptions, figures: dict) -> str:
    """The report page: run facts, coverage, the per-layer table and the figures, all inline."""
    manifest = data.run.manifest
    model = manifest.get("model") or {}
    esc = html.escape
    facts = {
        "run": data.run.uri,
        "model": f"{model.get('model', '?')} (weights {model.get('weights', '?')}, {model.get('num_classes', '?')} classes)",
        "commands": ", ".join(sorted(manifest.get("commands", {}))) or "none",
        "code version": manifest.get("code_version", "?"),
        "report written": datetime.now(UTC).isoformat(timespec="seconds"),
        "thresholds": f"high selectivity >= {options.high}, low selectivity <= {options.low}",
        "bootstrap": f"{options.resamples} resamples of units, seed {options.seed}, "
        f"{round(100 * options.confidence)}% percentile interval",
    }
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>repsub report: {esc(data.run.uri)}</title><style>{CSS}</style></head><body>",
        "<h1>Representative Substitution report</h1>",
        "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in facts.items()) + "</dl>",
    ]
    notes = data.coverage.notes
    out.append('<h2>Coverage</h2><ul class="notes" id="coverage">')
    out += [f"<li>{esc(n)}</li>" for n in notes] or ["<li>complete: every layer and unit, AM and IAM</li>"]
    out.append("</ul>")
    out.append("<h2>Per-layer statistics</h2>")
    out.append(_table(stats))
    out.append(
        f"<p>&dagger; logits (no ReLU): {LOGITS_NOTE}, so the thresholds and the selectivity axis mean less "
        "there. Spearman rho is over alive units with both values; <em>excluded</em> counts the units with "
        "RS left out (dead, NaN, or without a selectivity row).</p>"
    )
    out.append("<h2>Spearman rho against layer depth</h2>")
    out.append(
        _img(figures["depth"], "Spearman rho against layer depth") if figures["depth"] else _none("RS")
    )
    out.append("<h2>RS against selectivity</h2>")
    for layer, path in figures["scatter"].items():
        out.append(_img(path, f"RS against selectivity, {layer}"))
    if not figures["scatter"]:
        out.append(_none("RS and selectivity of the same units"))
    out.append("<h2>Units substituting a high-selectivity unit</h2>")
    if figures["grid"]:
        path, choice = figures["grid"]
        out.append(
            f"<p>{esc(choice.layer)} unit {choice.unit} (selectivity {choice.selectivity:.3f}, RS "
            f"{choice.rs:.3f}): its {choice.method.upper()} image, then the {choice.method.upper()} images of "
            f"the units whose activation on it is strictly higher, most active first.</p>"
        )
        if choice.shown_missing:
            out.append(f"<p>No image in the run for unit(s) {esc(format_ranges(choice.shown_missing))}.</p>")
        out.append(_img(path, f"substitution grid, {choice.layer} unit {choice.unit}"))
    else:
        out.append(_none("IAM or AM images"))
    out.append("<h2>Histograms</h2>")
    for layer, path in figures["hist"].items():
        out.append(_img(path, f"histograms, {layer}"))
    if not figures["hist"]:
        out.append(_none("rows"))
    out.append("</body></html>")
    return "\n".join(out)


def _none(what: str) -> str:
    return f'<p class="empty">The run has no {html.escape(what)} to draw.</p>'


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `report` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("report", help="statistics, the paper's figures and an HTML report of a run")
    p.add_argument("run", metavar="RUN", help="run directory (or URI)")
    p.add_argument(
        "--out", default=None, help="output directory (default RUN/report; required for a run at a URI)"
    )
    p.add_argument(
        "--high",
        type=float,
        default=HIGH_SELECTIVITY,
        help=f"high-selectivity threshold, selectivity >= it (default {HIGH_SELECTIVITY})",
    )
    p.add_argument(
        "--low",
        type=float,
        default=LOW_SELECTIVITY,
        help=f"low-selectivity threshold, selectivity <= it (default {LOW_SELECTIVITY})",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    p.add_argument(
        "--resamples",
        type=int,
        default=BOOTSTRAP_RESAMPLES,
        help=f"bootstrap resamples for the {round(100 * CONFIDENCE)}%% interval (default {BOOTSTRAP_RESAMPLES})",
    )
    p.add_argument(
        "--unit",
        default=None,
        metavar="LAYER:UNIT",
        help="unit of the substitution grid, e.g. conv3:17 (default: the most selective IAM unit with RS > 0)",
    )
    return p


def cmd_report(args) -> None:
    """Run `repsub report` from parsed arguments; prints where the report is and what the run lacks."""
    path, data, _ = build_report(
        args.run,
        args.out,
        high=args.high,
        low=args.low,
        seed=args.seed,
        resamples=args.resamples,
        unit=args.unit,
    )
    for note in data.coverage.notes[:20]:
        print(f"note: {note if len(note) < 300 else note[:297] + '...'}")
    print(f"wrote {path} and {path.with_name(STATS_FILE)}")
