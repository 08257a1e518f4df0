"""The exemplar strips of the report's unit detail: each unit's first top and bottom exemplars as thumbnails,
and its band strips (the first sampled images of each band of its activation: repsub.analysis.bands).

An image that many units share is embedded once: the page holds one list of WebP thumbnails (parsed only when
a unit's detail first opens) and, per unit, positions into it. Their side is chosen from the number of
distinct images, as the AM/IAM thumbnails' (repsub.analysis.thumbnails), within EXEMPLAR_BUDGET: for a full
VGG16 run on ImageNet val (13,416 units, up to 50,000 distinct images) the page stays under 60 MB
(benchmarks/report_scale.py, docs/performance.md).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.dataset as ds
from PIL import Image

from repsub.analysis.thumbnails import encode_thumbnail

STRIP = 6  # exemplars shown per side (the most extreme first): bounds the distinct images a page embeds
EXEMPLAR_BUDGET = 12_000_000  # bytes of base64 text for all exemplar thumbnails of a page
EXEMPLAR_SIDES = (64, 48, 40, 32, 24, 20, 16)
# Measured for WebP q70 of downscaled natural-image JPEG thumbnails, 16-48 px (docs/performance.md).
WEBP_BYTES_PER_PIXEL = 0.6


def exemplar_side(n_images: int, image_side: int | None) -> int:
    """The side of the thumbnails of `n_images` distinct exemplar images stored at `image_side` px."""
    fits = [s for s in EXEMPLAR_SIDES if n_images * s * s * WEBP_BYTES_PER_PIXEL * 4 / 3 <= EXEMPLAR_BUDGET]
    side = fits[0] if fits else EXEMPLAR_SIDES[-1]
    return min(side, image_side) if image_side else side


def exemplar_strips(
    run, unit_keys: list[tuple[str, int]], band_samples: dict[tuple[str, int], list[list[int]]] | None = None
) -> tuple[dict | None, list[str]]:
    """({"top": [[position, ...] per units entry], "bottom": ..., "bands": [[[position, ...] per band] per
    units entry], "side", "per_side", "k"}, the thumbnails): "top" and "bottom" for a run with exemplars,
    "bands" given `band_samples` ({(layer, unit): image indices per band}); (None, []) with neither. A position
    is -1 where the run has no thumbnail of the image."""
    by_unit = _exemplar_indices(run, unit_keys)
    if by_unit is None and band_samples is None:
        return None, []
    indices = {i for sides in (by_unit or {}).values() for pairs in sides.values() for _, i in pairs}
    wanted = set(unit_keys)
    indices |= {
        i for key, bands in (band_samples or {}).items() if key in wanted for band in bands for i in band
    }
    thumbs, position, side = _thumbnails(run, sorted(indices))
    strips: dict = {}
    if by_unit is not None:
        strips.update(top=[], bottom=[])
        for key in unit_keys:
            sides = by_unit.get(key, {"top": [], "bottom": []})
            for name in ("top", "bottom"):
                strips[name].append([position.get(i, -1) for _, i in sorted(sides[name])])
    if band_samples is not None:
        strips["bands"] = [
            [[position.get(i, -1) for i in band] for band in band_samples.get(key, [])] for key in unit_keys
        ]
    strips.update(side=side, per_side=STRIP)
    return strips, thumbs


def _exemplar_indices(run, unit_keys) -> dict[tuple[str, int], dict[str, list]] | None:
    """{(layer, unit): {"top": [(rank, image index)], "bottom": ...}} of the first STRIP exemplars of each
    side, for `unit_keys`; None for a run without exemplars."""
    if getattr(run, "exemplar_rows", None) is None:
        return None
    rows = run.exemplar_rows.to_table(
        columns=["layer", "unit", "side", "rank", "image_index"], filter=ds.field("rank") < STRIP
    )
    wanted = set(unit_keys)
    by_unit: dict[tuple[str, int], dict[str, list]] = {}
    for layer, unit, side, rank, index in zip(*(rows.column(c).to_pylist() for c in rows.column_names),
                                              strict=True):  # fmt: skip
        if (layer, unit) in wanted:
            by_unit.setdefault((layer, unit), {"top": [], "bottom": []})[side].append((rank, index))
    return by_unit


def _thumbnails(run, indices: list[int]) -> tuple[list[str], dict[int, int], int]:
    """(base64 WebP thumbnails, {image index: position}, their side) of the stored images among `indices`."""
    if run.images is None or not indices:
        return [], {}, 0
    table = run.images.to_table(
        columns=["image_index", "image"], filter=ds.field("image_index").isin(np.asarray(indices))
    )
    found = table.column("image_index").to_pylist()
    images = table.column("image").to_pylist()
    stored = next((img for img in images if img is not None), None)
    stored_side = max(Image.open(io.BytesIO(stored)).size) if stored else None
    side = exemplar_side(len(found), stored_side)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL while coding
        thumbs = list(pool.map(lambda jpeg: encode_thumbnail(jpeg, side), images))
    return thumbs, {int(i): p for p, i in enumerate(found)}, side
