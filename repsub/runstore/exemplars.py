"""Writing the exemplars and bands of a selectivity pass into a run: the per-layer `exemplars` and `bands`
tables and the one `images` file of the thumbnails they refer to (repsub.runstore.tables.EXEMPLARS, BANDS,
IMAGES).

    RUN/exemplars/layer=<layer>/exemplars.parquet
    RUN/bands/layer=<layer>/bands.parquet
    RUN/images/images[-<random>].parquet   (one committed file, replaced under a new name)

The images file is rewritten whole: the new thumbnails, plus those already stored of the same data (its
`source`) that the new ones do not replace, so a pass over some layers keeps the images that earlier passes'
layers refer to. Thumbnails of other data are dropped: an image index means an image of one dataset only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from repsub.runstore.snapshot import listed
from repsub.runstore.tables import IMAGES, bands_table, exemplars_table
from repsub.runstore.writer import RunWriter


def write_exemplars(writer: RunWriter, accumulator, layers: list[str]) -> None:
    """One exemplars file per layer, from a repsub.core.exemplars.ExemplarAccumulator."""
    for name in layers:
        sides = {side: accumulator.side(name, side) for side in ("top", "bottom")}
        writer.write_table("exemplars", name, exemplars_table(sides))


def write_bands(writer: RunWriter, accumulator, layers: list[str]) -> None:
    """One bands file per layer, from a repsub.core.bands.BandAccumulator."""
    for name in layers:
        rows = bands_table(
            accumulator.edges[name].cpu().numpy(),
            accumulator.counts[name].cpu().numpy(),
            accumulator.samples[name]["index"].cpu().numpy(),
            accumulator.seed,
        )
        writer.write_table("bands", name, rows)


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
    writer.write_whole_table("images", table)  # a new file, the old one retired: readers keep their snapshot
    return table.num_rows


def read_images(location) -> pa.Table | None:
    """The stored images table of the run's committed snapshot (None if the run has none)."""
    manifest = location.read_manifest() or {}
    files = listed(manifest)
    if files is None:  # a run without a file list: what the directory holds
        paths = [location._path(IMAGES.name, name) for name in location.list_names(IMAGES.name)]
    else:
        paths = [location._path(IMAGES.name, inside) for inside in files.get(IMAGES.name, [])]
    if not paths:
        return None
    return pa.concat_tables([pq.read_table(path, filesystem=location.fs) for path in paths])
