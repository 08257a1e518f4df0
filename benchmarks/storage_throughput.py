"""Write and read throughput of a run's tables: the local filesystem against a local S3 server (SeaweedFS).

    .venv/bin/python -m benchmarks.storage_throughput [--files 24] [--units-per-file 64]

The same units-table files (random activations of a 4096-unit layer and 64x64 PNG-sized blobs) go
through repsub's own writer (atomic commit) and come back through `open_run`, on both storages.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from infra.seaweed import SeaweedS3
from repsub.analysis.run import open_run
from repsub.runstore.writer import RunWriter
from tests.run_helpers import record_command


def units_table(units: list[int], rng: np.random.Generator) -> pa.Table:
    n = len(units)
    return pa.table({
        "method": ["am"] * n, "unit": pa.array(units, pa.int32()),
        "activation": pa.array(rng.random(n, dtype=np.float32)),
        "layer_activations": pa.array(list(rng.random((n, 4096), dtype=np.float32)), pa.list_(pa.float32())),
        "rs": rng.random(n), "image": [rng.bytes(12_000) for _ in range(n)],
        "seed": pa.array(units, pa.int64()), "steps": pa.array([256] * n, pa.int32()),
    })  # fmt: skip


def measure(uri: str, tables: list[pa.Table]) -> tuple[float, float, int]:
    writer = RunWriter(uri)
    started = time.perf_counter()
    for table in tables:
        writer.write_units("am", "fc7", table, replace_existing=False)
    record_command(writer, "benchmark", {"model": "none"}, {})
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    read = open_run(uri).units.to_table()
    read_s = time.perf_counter() - started
    assert read.num_rows == sum(t.num_rows for t in tables)
    return write_s, read_s, read.get_total_buffer_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--units-per-file", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tables = [
        units_table(list(range(i * args.units_per_file, (i + 1) * args.units_per_file)), rng)
        for i in range(args.files)
    ]
    server = SeaweedS3()
    try:
        server.client().create_bucket(Bucket="bench")
        os.environ.update(server.env())
        with tempfile.TemporaryDirectory() as local:
            results = {"local": measure(local, tables), "s3": measure("s3://bench/run", tables)}
    finally:
        server.close()
    mb = results["local"][2] / 2**20
    print(f"{args.files} files x {args.units_per_file} units, {mb:.0f} MB in memory")
    print(f"{'':6} {'write MB/s':>11} {'read MB/s':>10}")
    for name, (write_s, read_s, _) in results.items():
        print(f"{name:6} {mb / write_s:>11.1f} {mb / read_s:>10.1f}")
    (lw, lr, _), (sw, sr, _) = results["local"], results["s3"]
    print(f"S3 / local: write {lw / sw:.2f}x, read {lr / sr:.2f}x (of local throughput)")


if __name__ == "__main__":
    main()
