"""A unit's bands as a notebook and the report read them: `Run.bands(layer, unit)`.

Rows of the `bands` table (repsub.runstore.tables.BANDS) with each band's class composition
(repsub.core.bands.class_composition: entropy, top classes and their lift against the data's class prior).
The prior is exact from the table itself: every image lies in one band of each unit, so a unit's class counts
summed over its bands are the data's.

A band's *mid-range association*: a band between the bottom and the top band (25-50% up to 99-99.9%) whose
top class is not the top band's top class: the unit responds moderately to a class other than the one that
drives it most. The bottom band (below 25%) is left out: it is where a unit's anti-preferences lie.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds

from repsub.analysis.layers import class_names
from repsub.core.band_ranges import BAND_NAMES, class_composition
from repsub.errors import RunError

TOP_CLASSES = 3  # classes of each band's composition


def class_prior(counts: np.ndarray) -> np.ndarray:
    """The data's class prior [C] from one unit's per-band class counts [bands, C] (each image in one band)."""
    totals = np.asarray(counts, np.float64).sum(0)
    return totals / totals.sum() if totals.sum() else totals


def compositions(counts: np.ndarray, top: int = TOP_CLASSES) -> list[dict]:
    """Each band's class composition (class_composition) of one unit's counts [bands, C]."""
    prior = class_prior(counts)
    return [class_composition(band, prior, top) for band in np.asarray(counts)]


def mid_range(parts: list[dict]) -> list[int]:
    """The bands (indices) of one unit's compositions (band 0 first) that are mid-range associations (module
    doc); none when the top band is empty."""
    top = parts[-1]["top_classes"]
    if not top:
        return []
    return [b for b in range(1, len(parts) - 1) if parts[b]["top_classes"][:1] not in ([], top[:1])]


def unit_bands(run, layer: str, unit: int, top: int = TOP_CLASSES):
    """The DataFrame of Run.bands (its docstring says the columns)."""
    import pandas as pd

    if run.band_rows is None:
        raise RunError(f"{run.uri} has no bands table (made by the band pass: `repsub selectivity --bands`)")
    where = (ds.field("layer") == layer) & (ds.field("unit") == int(unit))
    columns = ["band", "name", "lower", "upper", "images", "class_counts", "sample"]
    rows = run.band_rows.to_table(columns=columns, filter=where).sort_by("band")
    if rows.num_rows == 0:
        layers = sorted(set(run.band_rows.to_table(columns=["layer"]).column("layer").to_pylist()))
        raise RunError(
            f"{run.uri} has no bands of {layer} unit {unit}; layers with bands: {', '.join(layers)}"
        )
    counts = np.array(rows.column("class_counts").to_pylist(), dtype=np.int64)
    parts = compositions(counts, top)
    names = class_names(run.manifest)
    frame = rows.drop(["class_counts"]).to_pandas()
    frame["entropy"] = [p["entropy"] for p in parts]
    frame["top_classes"] = [p["top_classes"] for p in parts]
    frame["top_names"] = [[names[c] if names and c < len(names) else None for c in p["top_classes"]]
                          for p in parts]  # fmt: skip
    frame["top_counts"] = [p["top_counts"] for p in parts]
    frame["top_lift"] = [p["top_lift"] for p in parts]
    frame["mid_range"] = pd.Series(np.isin(np.arange(len(parts)), mid_range(parts)), index=frame.index)
    frame["class_counts"] = list(counts)
    return frame[["band", "name", "lower", "upper", "images", "entropy", "top_classes", "top_names",
                  "top_counts", "top_lift", "mid_range", "sample", "class_counts"]]  # fmt: skip


# Sampled images per band shown in the report: their positions cost 0.55 MB of page per image shown at VGG16's
# 13,416 units (docs/performance.md, issue 19), and they bound the distinct images a page embeds.
BAND_STRIP = 2
NAMED_PER_LAYER = 8  # units whose mid-range associations the report's bands section names, per layer


def band_summaries(run, strip: int = BAND_STRIP) -> dict[tuple[str, int], dict] | None:
    """{(layer, unit): {"n": images per band, "h": entropy, "top": [class, count, lift, ...] per band,
    "mid": mid-range bands, "sample": the first `strip` sampled images per band}} of every unit of the bands
    table (None for a run without one). Read in batches: the class counts are dropped once summarized."""
    if run.band_rows is None:
        return None
    partial: dict[tuple[str, int], list] = {}
    found: dict[tuple[str, int], dict] = {}
    columns = ["layer", "unit", "band", "class_counts", "sample"]
    for batch in run.band_rows.to_batches(columns=columns, batch_size=4096):
        values = [batch.column(name).to_pylist() for name in columns]
        for layer, unit, band, counts, sample in zip(*values, strict=True):
            parts = partial.setdefault((layer, unit), [None] * len(BAND_NAMES))
            parts[band] = (counts, sample[:strip])
            if all(part is not None for part in parts):
                found[(layer, unit)] = _summary(partial.pop((layer, unit)))
    return found


def _summary(parts: list) -> dict:
    """One unit's summary, its numbers rounded to what the page shows (entropy to 2 decimals, lift to 4
    significant digits): 13,416 units' summaries are some 5 MB of a page."""
    parts_of = compositions(np.array([counts for counts, _ in parts], dtype=np.int64))
    return {
        "n": [p["images"] for p in parts_of],
        "h": [round(p["entropy"], 2) for p in parts_of],
        "top": [
            [
                x
                for c, n, lift in zip(p["top_classes"], p["top_counts"], p["top_lift"], strict=True)
                for x in (c, n, None if lift != lift else float(f"{lift:.4g}"))
            ]
            for p in parts_of
        ],  # fmt: skip
        "mid": mid_range(parts_of),
        "sample": [sample for _, sample in parts],
    }


def mid_range_by_layer(summaries: dict[tuple[str, int], dict]) -> dict[str, dict]:
    """Per layer: units with bands, units with a mid-range association, and the first NAMED_PER_LAYER of
    those as (unit, [(band, its top class)], the top band's top class)."""
    layers: dict[str, dict] = {}
    for (layer, unit), summary in sorted(summaries.items()):
        entry = layers.setdefault(layer, {"units": 0, "with_mid": 0, "named": []})
        entry["units"] += 1
        if summary["mid"]:
            entry["with_mid"] += 1
            if len(entry["named"]) < NAMED_PER_LAYER:
                bands = [(b, summary["top"][b][0]) for b in summary["mid"]]
                entry["named"].append((unit, bands, summary["top"][-1][0]))
    return layers
