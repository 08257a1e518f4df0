"""`ray job submit --working-dir . -- python -m jobs.sweep --config jobs/configs/vgg16_imagenet.yaml`

Runs a repsub sweep on the cluster the job was submitted to, then prints the per-layer summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repsub.analysis.summary import format_summary
from repsub.data.synthetic import make_image_folder
from repsub.errors import RepsubError
from repsub.sweep import load_config, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default=None, help="overrides the config's `out`")
    parser.add_argument("--address", default="auto", help="Ray address (default auto: the job's cluster)")
    parser.add_argument(
        "--force-unlock", action="store_true", help="remove a stale run lock (see repsub sweep)"
    )
    parser.add_argument(
        "--prepare-demo-data",
        action="store_true",
        help="generate the demo ImageFolder at the config's selectivity.data if it is missing",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, out=args.out)
        data = config.selectivity.data
        if args.prepare_demo_data and data and not Path(data).exists():
            make_image_folder(data, num_classes=10, images_per_class=20, size=36, seed=2)
        rows = run_sweep(
            config, address=args.address, progress=sys.stderr.isatty(), force_unlock=args.force_unlock
        )
    except RepsubError as err:
        print(f"jobs.sweep: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(rows))
    print(f"sweep written to {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
