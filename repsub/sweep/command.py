"""The sweep command's options and what it does, shared by `repsub sweep` and `python -m jobs.sweep` (the
entry point of `ray job submit`), so that the two take the same flags. Light to import: building the parser
loads neither torch nor Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ADDRESS_HELP = (
    "auto (the running cluster), ray://HOST:PORT, or local (a new single-machine Ray that ends with the "
    "sweep)"
)


def add_sweep_arguments(parser: argparse.ArgumentParser, address_default: str | None) -> None:
    """The options of both entry points; only the default address differs (a job runs on its cluster)."""
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/)")
    parser.add_argument("--out", default=None, help="run location (default: the config's `out`)")
    default = (
        f"default {address_default}"
        if address_default
        else "default: a Ray already running on this machine, else a new local one"
    )
    parser.add_argument("--address", default=address_default, help=f"{ADDRESS_HELP} ({default})")
    parser.add_argument(
        "--force-unlock",
        action="store_true",
        help="remove a stale run lock left by a sweep that died (check that none is running)",
    )
    parser.add_argument(
        "--prepare-demo-data",
        action="store_true",
        help="generate the demo's images before the sweep: at the config's selectivity.data if that path is "
        "missing (the demo config's `data: demo` needs no flag: it is generated on first use)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none either when stderr is no terminal)"
    )


def prepare_demo_data(data: str | None) -> None:
    """For --prepare-demo-data: the demo's held-out images at `data`, a local path, when it does not exist
    (written under a temporary name, then renamed); `demo` itself is generated in the cache now."""
    from repsub.data.synthetic import DEMO_DATA, demo_val_dir

    if not data or data.startswith("s3://"):
        return
    if data == DEMO_DATA:
        demo_val_dir()
        return
    target = Path(data)
    if target.exists():
        return
    import shutil

    source = demo_val_dir()
    staging = target.with_name(f".{target.name}.tmp-demo")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    staging.rename(target)


def run_sweep_command(args: argparse.Namespace) -> str:
    """Load the config, prepare the demo data if asked, run the sweep; returns the per-layer summary and where
    the run is, as text."""
    from repsub.analysis.summary import format_summary
    from repsub.sweep.config import load_config
    from repsub.sweep.driver import run_sweep

    config = load_config(args.config, out=args.out)
    if args.prepare_demo_data:
        prepare_demo_data(config.selectivity.data)
    rows = run_sweep(
        config,
        address=args.address,
        progress=not args.no_progress and sys.stderr.isatty(),
        force_unlock=args.force_unlock,
    )
    return f"{format_summary(rows)}\nsweep written to {config.out}"
