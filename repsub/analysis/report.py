"""`repsub report RUN`: the statistics, the paper's figures and the unit explorer of a run, written into DIR.

    DIR/stats.parquet     one row per layer, method and basis (repsub.analysis.stats: the units', then each
                          basis's), options in its metadata
    DIR/importance_stats.parquet   importance against RS and selectivity (repsub.analysis.importance_stats),
                          for a run with an importance table only
    DIR/interpretability_stats.parquet   the interpretability index against RS and selectivity
                          (repsub.analysis.interpretability_stats), for a run with `repsub interpretability`
    DIR/figures/*.png     the figures (repsub.analysis.figures)
    DIR/report.html       self-contained: figures, data, style and script inline, no external resource

Everything is made in a hidden folder inside DIR first, then moved into place (the page last): a report
that fails leaves the previous one as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from repsub.analysis.bands import band_summaries
from repsub.analysis.bases_side_by_side import (
    bases_stats,
    basis_data,
    explorer_bases,
    has_bases,
    side_by_side_rows,
)
from repsub.analysis.explorer import bases_explorer_data, explorer_data
from repsub.analysis.figures import (
    BASES_RHO_BY_DEPTH,
    FIGURE_PATTERNS,
    INTERPRETABILITY_BY_DEPTH,
    RHO_BY_DEPTH,
    bases_rho_by_depth,
    choose_grid_unit,
    histograms,
    histograms_name,
    importance_rho_by_depth,
    importance_rho_name,
    interpretability_by_depth,
    interpretability_rho_by_depth,
    interpretability_rho_name,
    rho_by_depth,
    rs_vs_selectivity,
    scatter_name,
    substitutes_name,
    substitution_grid,
)
from repsub.analysis.importance_stats import (
    IMPORTANCE_STATS_FILE,
    against_names,
    compute_importance_stats,
    importance_metadata,
)
from repsub.analysis.interpretability_stats import (
    INTERPRETABILITY_STATS_FILE,
    compute_interpretability_stats,
    interpretability_metadata,
)
from repsub.analysis.load import RunData, load_run_data
from repsub.analysis.page import render_page
from repsub.analysis.run import open_run
from repsub.analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    DEFAULT_SEED,
    HIGH_SELECTIVITY,
    LOW_SELECTIVITY,
    StatsOptions,
    stats_metadata,
)
from repsub.analysis.thumbnails import image_side, thumbnail_side, thumbnails
from repsub.errors import RunError, UsageError
from repsub.runstore.storage import check_location
from repsub.runstore.tables import UNIT_BASIS
from repsub.validate import check_int, check_output_dir

STATS_FILE = "stats.parquet"
HTML_FILE = "report.html"
FIGURES_DIR = "figures"
STAGING_PREFIX = ".tmp-report-"  # + pid + random: the hidden folder a report is made in
OLD_FIGURE_PATTERNS = ("fig[1-4]_*.png",)  # names of reports written before the figures were renamed


def default_out(run_uri: str | os.PathLike) -> Path:
    """RUN/report for a local run; a run at a URI needs an explicit output directory."""
    text = os.fspath(run_uri)
    check_location(text, "run")  # before the message below repeats it: a URI may carry credentials
    if "://" in text and not text.startswith("file://"):
        raise UsageError(f"{text} is not a local directory: give --out for the report")
    return Path(text.removeprefix("file://")) / "report"


def write_report(run_uri: str | os.PathLike, out_dir: str | os.PathLike | None = None, **options) -> Path:
    """Write stats.parquet, the figures and report.html of the run at `run_uri` into `out_dir` (default
    RUN/report); returns the path of report.html. Options as build_report."""
    return build_report(run_uri, out_dir, **options)[0]


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
    """Write the report; returns (report.html, the run's data with its coverage, the statistics table of
    every basis). The figures, the statistics tables and the explorer's details are the units'; a run with
    the targets of a basis gets the bases side by side (repsub.analysis.bases_side_by_side).

    `unit` ('LAYER:UNIT') picks the substitution figure's unit; by default the most selective included IAM
    unit that other units substitute (RS > 0). Raises RunError for a path holding no run, a run of another
    schema version or unreadable tables, UsageError for bad options: before anything is written.
    """
    check_int(resamples, "--resamples", 1)  # the report's interval needs one (the summary takes 0: none)
    options = StatsOptions(high=high, low=low, seed=seed, resamples=resamples)
    options.validate()
    out = Path(out_dir) if out_dir is not None else default_out(run_uri)
    check_output_dir(out, "--out")
    data = load_run_data(open_run(run_uri))
    datas = basis_data(data.run, data)  # the units' data and each basis's, read apart
    all_stats = bases_stats(datas, options)
    stats = all_stats.filter(pc.equal(all_stats.column("basis"), UNIT_BASIS))  # the units': tables, figures
    bases = side_by_side_rows(all_stats, datas) if has_bases(datas) else []
    importance = compute_importance_stats(data, options) if data.importance is not None else None
    index_stats = compute_interpretability_stats(data, options) if data.interpretability is not None else None
    grid_unit = choose_grid_unit(data, options, unit)  # a bad --unit fails before anything is written
    created = _missing_dirs(out)  # removed again if the report fails
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    except OSError as err:
        _remove_empty(created)
        raise RunError(f"cannot create the report directory {out}: {err}") from err
    committed = False
    try:
        (staging / FIGURES_DIR).mkdir()
        figures = _draw_figures(data, stats, importance, options, grid_unit, staging / FIGURES_DIR)
        figures.update(_index_figures(data, index_stats, staging / FIGURES_DIR))
        figures["bases_depth"] = (
            bases_rho_by_depth(data, all_stats, staging / FIGURES_DIR / BASES_RHO_BY_DEPTH) if bases else None
        )
        bands = band_summaries(data.run)
        explorer, side = _explorer(datas, bands)
        page = render_page(data, stats, options, figures, explorer, side, importance, index_stats, bases,
                           explorer_bases(datas), bands)  # fmt: skip
        pq.write_table(all_stats.replace_schema_metadata(stats_metadata(data, options)), staging / STATS_FILE)
        if importance is not None:
            meta = importance_metadata(data, options)
            pq.write_table(importance.replace_schema_metadata(meta), staging / IMPORTANCE_STATS_FILE)
        if index_stats is not None:
            meta = interpretability_metadata(data, options)
            pq.write_table(index_stats.replace_schema_metadata(meta), staging / INTERPRETABILITY_STATS_FILE)
        (staging / HTML_FILE).write_text(page, encoding="utf-8")
        _commit(staging, out)
        committed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            _remove_empty(created)
    return out / HTML_FILE, data, all_stats


def _missing_dirs(out: Path) -> list[Path]:
    """The directories that making `out` creates, deepest first."""
    missing = []
    for directory in [out, *out.parents]:
        if directory.exists():
            break
        missing.append(directory)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:  # deepest first; one that holds something stays
        try:
            directory.rmdir()
        except OSError:
            return


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of reports that were killed (SIGKILL, power loss), recognized by their writer's pid no
    longer running on this host; a report at work beside this one keeps its own."""
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name.removeprefix(STAGING_PREFIX).partition("-")[0]
        if folder.is_dir() and (not pid.isdigit() or not _running(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _explorer(datas: dict[str, RunData], bands: dict | None) -> tuple[tuple[str, str, str] | None, int]:
    """The explorer's documents and thumbnail side: of the units (with their `bands`), with every basis's rows
    beside them."""
    data = datas[UNIT_BASIS]
    rows = sum(len(r.indices) for d in datas.values() for r in d.rows.values())
    if not rows:
        return None, 0
    original = image_side(data)
    strips = data.run.exemplar_rows is not None or data.run.band_rows is not None
    side = thumbnail_side(rows, original, strips)
    if len(datas) == 1:
        return explorer_data(data, thumbnails(data, side), side, original, bands=bands), side
    thumbs = {basis: thumbnails(d, side) for basis, d in datas.items()}
    return bases_explorer_data(datas, thumbs, side, original, bands=bands), side


def _draw_figures(
    data: RunData,
    stats: pa.Table,
    importance: pa.Table | None,
    options: StatsOptions,
    grid_unit,
    folder: Path,
) -> dict:
    """{'depth': path|None, 'grid': (path, GridChoice)|None, 'scatter': {layer: path}, 'hist': {layer: path},
    'importance': {against: path}}."""
    figures: dict = {"scatter": {}, "hist": {}, "grid": None, "importance": {}}
    figures["depth"] = rho_by_depth(data, stats, folder / RHO_BY_DEPTH)
    for against in against_names(data) if importance is not None else []:
        path = importance_rho_by_depth(data, importance, against, folder / importance_rho_name(against))
        if path is not None:
            figures["importance"][against] = path
    for info in data.layers:
        path = rs_vs_selectivity(data, info.name, options, folder / scatter_name(info.name))
        if path is not None:
            figures["scatter"][info.name] = path
        figures["hist"][info.name] = histograms(data, info.name, options, folder / histograms_name(info.name))
    if grid_unit is not None:
        layer, index, method = grid_unit
        figures["grid"] = substitution_grid(
            data, layer, index, method, folder / substitutes_name(layer, index)
        )
    return figures


def _index_figures(data: RunData, index_stats: pa.Table | None, folder: Path) -> dict:
    """{'index_depth': path|None, 'interpretability': {against: path}}: the interpretability index's figures."""
    if index_stats is None:
        return {"index_depth": None, "interpretability": {}}
    drawn = {}
    for against in against_names(data):
        path = interpretability_rho_by_depth(
            data, index_stats, against, folder / interpretability_rho_name(against)
        )
        if path is not None:
            drawn[against] = path
    depth = interpretability_by_depth(data, index_stats, folder / INTERPRETABILITY_BY_DEPTH)
    return {"index_depth": depth, "interpretability": drawn}


def _commit(staging: Path, out: Path) -> None:
    """Move the new report into place: figures (the old ones removed), statistics, then the page."""
    for optional in (IMPORTANCE_STATS_FILE, INTERPRETABILITY_STATS_FILE):
        if not (staging / optional).exists():  # the run no longer has that table
            (out / optional).unlink(missing_ok=True)
    figures = out / FIGURES_DIR
    figures.mkdir(exist_ok=True)
    for pattern in (*FIGURE_PATTERNS, *OLD_FIGURE_PATTERNS):  # figures of layers no longer in the run
        for old in figures.glob(pattern):
            old.unlink()
    for made in (staging / FIGURES_DIR).iterdir():
        made.replace(figures / made.name)
    (staging / STATS_FILE).replace(out / STATS_FILE)
    for optional in (IMPORTANCE_STATS_FILE, INTERPRETABILITY_STATS_FILE):
        if (staging / optional).exists():
            (staging / optional).replace(out / optional)
    (staging / HTML_FILE).replace(out / HTML_FILE)
