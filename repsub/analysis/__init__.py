"""The analysis of a run, in one package: what `repsub report`, `repsub summary` and `Run.stats()` share.

options     the statistics' options and defaults (light: the command line's help reads them)
layers      the run's layers (depth, how each is read) from its manifest's catalog
tables      reading a table with one rule for duplicate rows
load        the tables joined into one frame of units
importance  the importance-by-ablation table (when the run has one)
exclusion   which units enter the statistics, and why the others are left out
coverage    what the run lacks compared with the catalog
stats       the statistics per layer and method (one implementation)
importance_stats  importance against RS and selectivity per layer and ablation
summary     the statistics as text tables (`repsub summary`, demo, sweep)
figures     the paper's figures (matplotlib, files named by what they show)
thumbnails  small images for the page's gallery
explorer    the data of the page's unit explorer
page        the self-contained HTML page (with report.css, explorer.js)
report      writing it all (`repsub report`); commands: the CLI's options
"""

from repsub.lazy import lazy_exports

# Names resolved on first use, so that importing a light module of the package (options, commands) does not
# import pyarrow, scipy and matplotlib.
_EXPORTS = {
    "FRAME_SCHEMA": "load",
    "RunData": "load",
    "load_run_data": "load",
    "unit_frame": "load",
    "build_report": "report",
    "write_report": "report",
    "STATS_SCHEMA": "stats",
    "compute_stats": "stats",
    "StatsOptions": "options",
    "IMPORTANCE_STATS_SCHEMA": "importance_stats",
    "compute_importance_stats": "importance_stats",
    "format_summary": "summary",
    "format_table": "summary",
    "run_summary": "summary",
    "summary_rows": "summary",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
