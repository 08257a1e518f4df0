"""The `repsub report` and `repsub summary` commands: their options and what they print.

Building the parsers imports nothing heavy (the options' defaults come from repsub.analysis.options): the
command functions import what they run, so `repsub --help` starts fast (tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from repsub.analysis.options import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    DEFAULT_SEED,
    HIGH_SELECTIVITY,
    LOW_SELECTIVITY,
)


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `report` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "report",
        help="statistics, the paper's figures and an HTML report of a run",
        description="Write DIR/stats.parquet (per layer and method: selectivity, RS, Spearman rho of RS against "
        "selectivity with a bootstrap interval, over the units that are alive and whose optimization drove "
        "them; the others counted by reason), importance_stats.parquet for a run with importance, the "
        "figures (figures/*.png) and report.html (self-contained, with a unit explorer). Written whole or "
        "not at all.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (or URI)")
    p.add_argument(
        "--out", default=None, help="output directory (default RUN/report; required for a run at a URI)"
    )
    p.add_argument(
        "--high", type=float, default=HIGH_SELECTIVITY,
        help=f"high-selectivity threshold, selectivity >= it (default {HIGH_SELECTIVITY})",
    )  # fmt: skip
    p.add_argument(
        "--low", type=float, default=LOW_SELECTIVITY,
        help=f"low-selectivity threshold, selectivity <= it (default {LOW_SELECTIVITY})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    p.add_argument(
        "--resamples", type=int, default=BOOTSTRAP_RESAMPLES,
        help=f"bootstrap resamples for the {round(100 * CONFIDENCE)}%% interval (default {BOOTSTRAP_RESAMPLES})",
    )  # fmt: skip
    p.add_argument(
        "--unit", default=None, metavar="LAYER:UNIT",
        help="unit of the substitution figure, e.g. conv3:17 (default: the most selective included IAM unit "
        "with RS > 0)",
    )  # fmt: skip
    return p


def cmd_report(args) -> None:
    """Run `repsub report` from parsed arguments; prints where the report is and what the run lacks."""
    from repsub.analysis.importance_stats import IMPORTANCE_STATS_FILE
    from repsub.analysis.interpretability_stats import INTERPRETABILITY_STATS_FILE
    from repsub.analysis.report import STATS_FILE, build_report
    from repsub.errors import cut, visible

    with _terminate_as_interrupt():  # a `kill` cleans up like Ctrl-C: no hidden staging folder stays
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
        print(f"note: {cut(visible(note), 300)}")
    tables = [STATS_FILE] + ([IMPORTANCE_STATS_FILE] if data.importance is not None else [])
    tables += [INTERPRETABILITY_STATS_FILE] if data.interpretability is not None else []
    print(f"wrote {path} and {', '.join(str(path.with_name(name)) for name in tables)}")


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the block runs, so that its `finally` clauses run (the main
    thread only: elsewhere signal handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_summary_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "summary",
        help="print the per-layer statistics of a run (the report's, without the bootstrap interval)",
        description="Print one line per layer: how it is read, units, dead units, mean selectivity and, per "
        "method, the units in the statistics, mean RS, Spearman rho of RS against selectivity and the units "
        "left out by reason; for a run with importance, a table of rho of importance against RS and "
        "selectivity; for a run with `repsub interpretability`, a table of the mean interpretability index per "
        "layer and similarity and its rho against RS and selectivity; for a run with the targets of a basis, a table of the units and each basis side by side per layer (mean selectivity, mean RS, rho, mean accuracy drop, the basis's metrics). The numbers of `repsub report` with its default thresholds, without the interval.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (or URI)")
    return p


def cmd_summary(args) -> None:
    from repsub.analysis.run import open_run
    from repsub.analysis.summary import (
        format_bases_summary,
        format_importance_summary,
        format_interpretability_summary,
        format_summary,
        run_summaries,
    )

    rows, importance, index, bases = run_summaries(open_run(args.run), with_bases=True)
    print(format_summary(rows))
    if importance:
        print("\n" + format_importance_summary(importance))
    if index:
        print("\n" + format_interpretability_summary(index))
    if bases:
        print("\n" + format_bases_summary(bases))
