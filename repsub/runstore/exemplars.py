"""Writing the exemplars of a selectivity pass into a run: the per-layer `exemplars` table and the one
`images` file of their thumbnails (repsub.runstore.tables.EXEMPLARS, IMAGES).

    RUN/exemplars/layer=<layer>/exemplars.parquet
    RUN/images/images.parquet

The images file is rewritten whole: the new thumbnails, plus those already stored of the same data (its
`source`) that the new ones do not replace, so a pass over some layers keeps the images that earlier passes'
layers refer to. Thumbnails of other data are dropped: an image index means an image of one dataset only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from repsub.runstore.tables import IMAGES, exemplars_table
from repsub.runstore.writer import RunWriter

IMAGES_FILE = "images/images.parquet"


def write_exemplars(writer: RunWriter, accumulator, layers: list[str]) -> None:
    """One exemplars file per layer, from a repsub.core.exemplars.ExemplarAccumulator."""
    for name in layers:
        sides = {side: accumulator.side(name, side) for side in ("top", "bottom")}
        writer.write_table("exemplars", name, exemplars_table(sides))


def write_images(writer: RunWriter, batches, source: str) -> int:
    """Store the thumbnails of `batches` ((indices, labels, encoded images) as repsub.data.thumbnails
    yields them) of the data at `source`, keeping the stored ones of the same data; returns the rows stored."""
    parts = [
        pa.table(
            {
                "image_index": pa.array(index, pa.int64()),
                "label": pa.array(labels, pa.int32()),
                "image": pa.array(images, pa.binary()),
                "source": pa.array([source] * len(index), pa.string()),
            }
        )  # fmt: skip
        for index, labels, images in batches
    ]
    new = pa.concat_tables(parts) if parts else IMAGES.schema.empty_table()
    stored = read_images(writer)
    if stored is not None:
        same_data = pc.equal(stored.column("source"), source)
        replaced = pc.is_in(
            stored.column("image_index"), value_set=new.column("image_index").combine_chunks()
        )
        stored = stored.filter(pc.and_(same_data, pc.invert(replaced)))
        new = pa.concat_tables([stored, new.cast(IMAGES.schema)])
    order = np.argsort(new.column("image_index").to_numpy(), kind="stable")
    table = IMAGES.conform(new).take(pa.array(order))
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd", row_group_size=4096)
    writer.put_bytes(IMAGES_FILE, buffer.getvalue().to_pybytes())
    return table.num_rows


def read_images(location) -> pa.Table | None:
    """The stored images table (None if the run has none)."""
    data = location.get_bytes(IMAGES_FILE)
    return None if data is None else pq.read_table(pa.BufferReader(data))
