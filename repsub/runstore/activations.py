"""Per-image activations, streamed into a run as Parquet during the selectivity pass.

    RUN/activations/layer=<layer>/activations.parquet
        image_index int64, label int32, activations list<float32>   (+ the `layer` partition column)

One row per image per layer, in pass order. Each layer has its own ``pq.ParquetWriter`` on a hidden
temporary file; rows are buffered until a row group is full (``row_group_rows``: about 16 MiB of
activations, e.g. 1,024 rows for VGG16's fc6/fc7 of 4,096 units, 8,192 rows for conv5_3's 512) and
written, so memory stays at one row group per layer however long the pass. ``commit`` moves the
files into place once the pass is complete; ``abort`` (or an exception inside ``with``) removes them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from repsub.runstore.tables import ACTIVATIONS
from repsub.runstore.writer import RunWriter

ROW_GROUP_BYTES = 16 * 2**20  # activations per row group: large reads, bounded memory
MAX_ROW_GROUP_ROWS = 65536
FILE_NAME = "activations.parquet"


def row_group_rows(units: int) -> int:
    """Rows per row group for a layer of `units` float32 activations (about ROW_GROUP_BYTES)."""
    return int(max(1, min(MAX_ROW_GROUP_ROWS, ROW_GROUP_BYTES // (4 * max(units, 1)))))


def activations_array(values: np.ndarray) -> pa.ListArray:
    """[B, N] float32 -> list<float32> of B rows, without a Python loop."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    rows, units = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * units, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), pa.float32()))


class _LayerStream:
    def __init__(self, run: RunWriter, layer: str, units: int):
        self.run = run
        self.layer = layer
        self.rows_per_group = row_group_rows(units)
        self.staged, self.final = run.stage("activations", layer, FILE_NAME)
        self.sink = run.fs.open_output_stream(self.staged)
        self.writer = pq.ParquetWriter(self.sink, ACTIVATIONS.schema, compression="zstd")
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.rows = 0

    def add(self, index: np.ndarray, labels: np.ndarray, values: np.ndarray) -> None:
        self.pending.append((index, labels, values))
        self.pending_rows += len(index)
        while self.pending_rows >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, rows: int) -> None:
        """Write the first `rows` pending rows as one row group."""
        index, labels, values = (np.concatenate(parts) for parts in zip(*self.pending, strict=True))
        head = slice(0, rows)
        table = pa.Table.from_arrays(
            [
                pa.array(index[head], pa.int64()),
                pa.array(labels[head], pa.int32()),
                activations_array(values[head]),
            ],
            schema=ACTIVATIONS.schema,
        )
        self.writer.write_table(table, row_group_size=rows)
        self.rows += rows
        rest = slice(rows, None)
        self.pending = [(index[rest], labels[rest], values[rest])] if len(index) > rows else []
        self.pending_rows = len(index) - rows

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.writer.close()
        self.sink.close()

    def abort(self) -> None:
        try:
            self.writer.close()
            self.sink.close()
        except Exception:  # already closed or broken: the file goes anyway
            pass
        self.run.discard(self.staged)


class ActivationWriter:
    """Streams the activations of `layers` ({name: units}) into the run, one row per image per layer.

    >>> with ActivationWriter(run_writer, {"fc7": 4096}) as sink, LayerCapture(model, [fc7]) as capture:
    ...     for images, labels in batches:
    ...         sink.add(capture(images).activations, labels)
    ...     sink.commit()
    """

    def __init__(self, run: RunWriter, layers: dict[str, int], first_index: int = 0):
        self.streams: dict[str, _LayerStream] = {}
        self.next_index = first_index
        self.committed = False
        try:
            for name, units in layers.items():
                self.streams[name] = _LayerStream(run, name, units)
        except BaseException:
            self.abort()
            raise

    def add(self, activations: dict[str, torch.Tensor], labels: torch.Tensor, index=None) -> None:
        """One batch: {layer: [B, N]} (others ignored), labels [B]; `index` [B] defaults to the running count."""
        count = len(labels)
        if index is None:
            index = np.arange(self.next_index, self.next_index + count, dtype=np.int64)
        index = np.asarray(index, dtype=np.int64)
        self.next_index = int(index[-1]) + 1 if count else self.next_index
        label_values = labels.detach().cpu().numpy().astype(np.int32)
        for name, stream in self.streams.items():
            values = activations[name].detach().to("cpu", torch.float32).numpy()
            stream.add(index, label_values, values.reshape(count, -1))

    def row_groups(self) -> dict[str, int]:
        """Rows per row group of each layer (what the manifest records)."""
        return {name: stream.rows_per_group for name, stream in self.streams.items()}

    def commit(self) -> dict[str, str]:
        """Finish the files and move them into place; returns {layer: path}."""
        for stream in self.streams.values():
            stream.close()
        runs = {id(stream.run): stream.run for stream in self.streams.values()}  # one writer, in practice
        with contextlib.ExitStack() as commits:  # every layer's file in one snapshot
            for run in runs.values():
                commits.enter_context(run.committing())
            for stream in self.streams.values():
                stream.run.publish(stream.staged, stream.final)
        self.committed = True
        return {name: stream.final for name, stream in self.streams.items()}

    def abort(self) -> None:
        for stream in self.streams.values():
            stream.abort()

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()
