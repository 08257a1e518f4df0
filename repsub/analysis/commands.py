"""The `repsub report` and `repsub summary` commands: their options and what they print."""

from __future__ import annotations

import argparse

from ..run import open_run
from .report import STATS_FILE, build_report
from .stats import BOOTSTRAP_RESAMPLES, CONFIDENCE, DEFAULT_SEED, HIGH_SELECTIVITY, LOW_SELECTIVITY
from .summary import format_summary, run_summary


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `report` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("report", help="statistics, the paper's figures and an HTML report of a run")
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


def add_summary_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "summary",
        help="print the per-layer statistics of a run (the report's, without the bootstrap interval)",
    )
    p.add_argument("run", metavar="RUN", help="run directory (or URI)")
    return p


def cmd_summary(args) -> None:
    print(format_summary(run_summary(open_run(args.run))))
