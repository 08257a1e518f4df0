"""The analysis of a run, in one package: what `repsub report`, `repsub summary` and `Run.stats()` share.

layers      the run's layers (depth, how each is read) from its manifest's catalog
load        reading the tables (one rule for duplicate rows) into one joined frame of units
exclusion   which units enter the RS statistics, and why the others are left out
coverage    what the run lacks compared with the catalog
stats       the statistics per layer and method (one implementation)
summary     the statistics as a text table (`repsub summary`, demo, sweep)
figures     the paper's figures (matplotlib, files named by what they show)
thumbnails  small images for the page's gallery
explorer    the data of the page's unit explorer
page        the self-contained HTML page (with report.css, explorer.js)
report      writing it all (`repsub report`); commands: the CLI's options
"""

from .load import FRAME_SCHEMA, RunData, load_run_data, unit_frame
from .report import build_report, write_report
from .stats import STATS_SCHEMA, StatsOptions, compute_stats
from .summary import format_summary, format_table, run_summary, summary_rows

__all__ = [
    "FRAME_SCHEMA",
    "STATS_SCHEMA",
    "RunData",
    "StatsOptions",
    "build_report",
    "compute_stats",
    "format_summary",
    "format_table",
    "load_run_data",
    "run_summary",
    "summary_rows",
    "unit_frame",
    "write_report",
]
