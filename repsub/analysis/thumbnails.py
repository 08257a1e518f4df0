"""Small WebP copies of the units' images, for the report page's gallery.

The page embeds one thumbnail per units row, so their side is chosen from the number of rows to keep the
page small: the largest of THUMBNAIL_SIDES whose estimated total stays within THUMBNAIL_BUDGET, never
larger than the images themselves. For VGG16's 13,416 units x 2 methods that is 48 px (about 1 KB each,
WebP quality 70: benchmarks/report_scale.py, docs/performance.md); the demo's 32 px images are kept whole.
A run with exemplars or bands leaves room for their strips and summaries (STRIPS_SHARE of the budget): 40 px
at VGG16's size.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from PIL import Image

from repsub.analysis.load import FILENAME, RunData
from repsub.analysis.tables import basis_filter
from repsub.errors import RunError

THUMBNAIL_BUDGET = 40_000_000  # bytes of base64 text for all thumbnails of a page
# Measured at VGG16 scale, the exemplar and band strips and the band summaries take 24 MB of the page's 60
# (docs/performance.md): where they are shown, the AM/IAM thumbnails get this much less.
STRIPS_SHARE = 7_000_000
THUMBNAIL_SIDES = (128, 96, 80, 64, 56, 48, 40, 32, 24)
WEBP_QUALITY = 70
# Measured for WebP q70 of 1/f-spectrum colour textures like AM/IAM images, 48-64 px (docs/performance.md).
WEBP_BYTES_PER_PIXEL = 0.45
BATCH_ROWS = 256  # images decoded per batch: memory stays at a few MB whatever the run's size


def thumbnail_side(rows: int, image_side: int | None, strips: bool = False) -> int:
    """The side, in pixels, of the thumbnails of `rows` images of side `image_side` (`strips`: the page also
    holds exemplar or band strips)."""
    budget = THUMBNAIL_BUDGET - (STRIPS_SHARE if strips else 0)
    fits = [s for s in THUMBNAIL_SIDES if rows * s * s * WEBP_BYTES_PER_PIXEL * 4 / 3 <= budget]
    side = fits[0] if fits else THUMBNAIL_SIDES[-1]
    return min(side, image_side) if image_side else side


def encode_thumbnail(encoded: bytes, side: int) -> str:
    """An encoded image's (PNG, JPEG) thumbnail (longer side `side`, aspect kept), as base64 WebP."""
    with Image.open(io.BytesIO(encoded)) as image:
        image = image.convert("RGB")
        if max(image.size) > side:
            image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        out = io.BytesIO()
        image.save(out, format="WEBP", quality=WEBP_QUALITY, method=4)
    return base64.b64encode(out.getvalue()).decode("ascii")


def image_side(data: RunData) -> int | None:
    """The side of the run's images, from the first one stored (None if the run has none)."""
    if data.run.units is None:
        return None
    for fragment in data.run.units.get_fragments():  # one file's first row, not a scan with read-ahead
        for png in fragment.head(1, columns=["image"]).column("image").to_pylist():
            if png is not None:
                with Image.open(io.BytesIO(png)) as image:
                    return max(image.size)
    return None


def thumbnails(data: RunData, side: int) -> dict[tuple[str, str, int], str]:
    """{(layer, method, unit): base64 WebP} for every units row with an image (duplicates: the kept row's)."""
    if data.run.units is None:
        return {}
    found: dict[tuple[str, str, int], str] = {}
    columns = ["layer", "method", "unit", "image", FILENAME]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL while coding
        try:
            only = basis_filter(data.basis) if "basis" in data.run.units.schema.names else None
            batches = data.run.units.to_batches(
                columns=columns, filter=only, batch_size=BATCH_ROWS, batch_readahead=2, fragment_readahead=1
            )  # read ahead little: a batch of 224 px PNGs is tens of MB
            for batch in batches:
                rows = _kept(batch, data.kept_files)
                encoded = pool.map(lambda row: encode_thumbnail(row[1], side), rows)
                found.update(zip((key for key, _ in rows), encoded, strict=True))
        except (pa.ArrowException, OSError) as err:
            raise RunError(f"{data.run.uri}: cannot read the units table's images: {err}") from err
    return found


def _kept(batch: pa.RecordBatch, kept_files: dict) -> list[tuple[tuple[str, str, int], bytes]]:
    keys = zip(*(batch.column(c).to_pylist() for c in ("layer", "method", "unit")), strict=True)
    files = batch.column(FILENAME).to_pylist()
    images = batch.column("image").to_pylist()
    return [
        (key, png)
        for key, path, png in zip(keys, files, images, strict=True)
        if png is not None and kept_files.get(key, path) == path
    ]
