"""`ray job submit --working-dir . -- python -m jobs.sweep --config jobs/configs/vgg16_imagenet.yaml`

Runs a repsub sweep on the cluster the job was submitted to, then prints the per-layer summary. It takes the
flags of `repsub sweep` (repsub.sweep.command); only --address defaults to auto, the job's cluster.
"""

from __future__ import annotations

import argparse
import sys

from repsub.errors import RepsubError
from repsub.sweep.command import add_sweep_arguments, run_sweep_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__.splitlines()[2])
    add_sweep_arguments(parser, address_default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run_sweep_command(args))
    except RepsubError as err:
        print(f"jobs.sweep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
