"""Consistent reads while a run is written (issue 20): repsub's file list in the manifest against Delta Lake.

For each store (a local directory, SeaweedFS S3 on loopback) and each design, adds BLOCKS blocks of units rows
to one layer partition, one commit each, then reads the table back whole. Prints the seconds per commit and
per read, side by side, with their ratio (Delta / repsub).

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.snapshot_commit            # repsub only
    pip install --target /tmp/dl deltalake arro3-core deprecated              # to compare (not a dependency)
    PYTHONPATH=$PWD:/tmp/dl .venv/bin/python -m benchmarks.snapshot_commit
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

import repsub
from repsub.runstore.session import WriteSession
from repsub.runstore.writer import RunWriter

IDENTITY = {"model": "toy", "weights": "random", "weights_sha256": "1" * 64, "num_classes": 3}
UNITS_PER_BLOCK, LAYER_UNITS = 64, 512


def block(index: int) -> pa.Table:
    """A units block as a visualize command writes it (no images: the commit, not the bytes, is measured)."""
    rng = np.random.default_rng(index)
    units = np.arange(index * UNITS_PER_BLOCK, (index + 1) * UNITS_PER_BLOCK)
    n = len(units)
    return pa.table({
        "method": ["iam"] * n, "unit": pa.array(units, pa.int32()),
        "activation": pa.array(rng.normal(size=n), pa.float32()),
        "layer_activations": pa.array(list(rng.normal(size=(n, LAYER_UNITS)).astype(np.float32)),
                                      pa.list_(pa.float32())),
        "rs": pa.array(rng.uniform(size=n)), "rs_ties": pa.array(np.zeros(n)),
        "status": ["ok"] * n, "objective_start": pa.array(np.zeros(n), pa.float32()),
        "objective_final": pa.array(np.zeros(n), pa.float32()), "image": pa.array([None] * n, pa.binary()),
        "seed": pa.array(np.zeros(n, np.int64)), "steps": pa.array(np.full(n, 2), pa.int32()),
        "command": ["visualize/iam"] * n,
    })  # fmt: skip


def repsub_times(uri: str, blocks: int, replace: bool = True) -> tuple[float, float]:
    """`replace`: each block first drops its units' rows from the partition's files (a command's default, which
    reads every file's `unit` column); without it, the commit alone (Delta's append does no more)."""
    writer = RunWriter(uri)
    with WriteSession(writer, "visualize/iam", IDENTITY, {}, []) as session:
        started = time.perf_counter()
        for i in range(blocks):
            writer.write_units("iam", "conv1", block(i), replace_existing=replace)
        commit = (time.perf_counter() - started) / blocks
        session.complete({})
    started = time.perf_counter()
    rows = repsub.open_run(uri).units.to_table().num_rows
    assert rows == blocks * UNITS_PER_BLOCK, rows
    return commit, time.perf_counter() - started


def delta_times(uri: str, blocks: int, options: dict | None) -> tuple[float, float]:
    from deltalake import DeltaTable, write_deltalake

    started = time.perf_counter()
    for i in range(blocks):
        rows = block(i)
        rows = rows.add_column(0, "layer", pa.array(["conv1"] * rows.num_rows))
        write_deltalake(uri, rows, mode="append", partition_by=["layer"], storage_options=options)
    commit = (time.perf_counter() - started) / blocks
    started = time.perf_counter()
    rows = DeltaTable(uri, storage_options=options).to_pyarrow_dataset().to_table().num_rows
    assert rows == blocks * UNITS_PER_BLOCK, rows
    return commit, time.perf_counter() - started


def measure(store: str, blocks: int, base: str, options: dict | None) -> None:
    ours = repsub_times(f"{base}/repsub", blocks)
    append = repsub_times(f"{base}/repsub-append", blocks, replace=False)
    try:
        theirs = delta_times(f"{base}/delta", blocks, options)
    except ImportError:
        theirs = None
    for what, index in (("commit of a block", 0), (f"read of {blocks} files", 1)):
        line = f"{store:6} {what:22} repsub {ours[index] * 1000:8.1f} ms (append {append[index] * 1000:6.1f})"
        if theirs:
            line += (
                f"   delta {theirs[index] * 1000:8.1f} ms   delta/repsub {theirs[index] / ours[index]:5.2f}"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("local", args.blocks, tmp, None)
    if args.no_s3:
        return
    from infra.seaweed import SeaweedS3

    server = SeaweedS3()
    try:
        server.client().create_bucket(Bucket="bench")
        os.environ.update(server.env())
        options = {**server.env(), "AWS_ALLOW_HTTP": "true", "aws_conditional_put": "etag"}
        measure("s3", args.blocks, "s3://bench/runs", options)
    finally:
        server.close()


if __name__ == "__main__":
    main()
