"""A unit's exemplars as a notebook reads them: `Run.exemplars(layer, unit)`.

Rows of the `exemplars` table (repsub.runstore.tables.EXEMPLARS) for one unit, joined with the thumbnails
of the `images` file by image index, and the class names the manifest records.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

from repsub.analysis.layers import class_names
from repsub.errors import RunError, UsageError

SIDES = ("top", "bottom")


def unit_exemplars(run, layer: str, unit: int, side: str | None = None, images: bool = True):
    """The DataFrame of Run.exemplars (its docstring says the columns)."""
    if side is not None and side not in SIDES:
        raise UsageError(f"unknown side {side!r}; valid sides: {', '.join(SIDES)} (or None: both)")
    if run.exemplar_rows is None:
        raise RunError(f"{run.uri} has no exemplars table (made by `repsub selectivity --exemplars K`)")
    where = (ds.field("layer") == layer) & (ds.field("unit") == unit)
    if side is not None:
        where &= ds.field("side") == side
    columns = ["side", "rank", "image_index", "label", "activation"]
    rows = run.exemplar_rows.to_table(columns=columns, filter=where)
    if rows.num_rows == 0:
        layers = sorted(set(run.exemplar_rows.to_table(columns=["layer"]).column("layer").to_pylist()))
        raise RunError(
            f"{run.uri} has no exemplars of {layer} unit {unit}; layers with exemplars: {', '.join(layers)}"
        )
    top_first = pc.not_equal(rows.column("side"), "top")
    rows = rows.append_column("_order", top_first).sort_by([("_order", "ascending"), ("rank", "ascending")])
    frame = rows.drop(["_order"]).to_pandas()
    names = class_names(run.manifest)
    frame.insert(4, "class", [names[i] if names and 0 <= i < len(names) else None for i in frame["label"]])
    if images:
        thumbnails = _thumbnails(run, rows.column("image_index").combine_chunks())
        frame["image"] = [thumbnails.get(int(i)) for i in frame["image_index"]]
    return frame


def _thumbnails(run, indices: pa.Array) -> dict[int, Image.Image]:
    if run.images is None:
        return {}
    found = run.images.to_table(
        columns=["image_index", "image"], filter=ds.field("image_index").isin(indices)
    )
    return {
        int(index): Image.open(io.BytesIO(data)).convert("RGB")
        for index, data in zip(
            found.column("image_index").to_pylist(), found.column("image").to_pylist(), strict=True
        )  # fmt: skip
    }
