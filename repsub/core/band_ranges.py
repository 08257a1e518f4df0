"""The bands of a unit's activation, defined: their edge ranks and names, the seeded key that samples an image,
and a band's class composition. Plain numpy (the report reads them without torch); the accumulator that fills
the bands over the data is repsub.core.bands."""

from __future__ import annotations

import numpy as np

# 50-90% is split at 0.75: the interpretability index's "central" variant compares the 25-50% and 50-75% sides.
EDGE_RANKS = (0.25, 0.5, 0.75, 0.9, 0.99, 0.999)
BAND_NAMES = ("below 25%", "25-50%", "50-75%", "75-90%", "90-99%", "99-99.9%", "top 0.1%")  # band 0 first


def image_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """The sampling key of each image index: splitmix64(seed's stream at index), a bijection of the index for
    a given seed, as int64 (the same 64 bits read signed: a total order all the same)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + (
            np.asarray(index, np.uint64) + np.uint64(1)
        ) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z.view(np.int64)


def class_composition(counts: np.ndarray, prior: np.ndarray, top: int = 3) -> dict:
    """One band's class composition from its per-class counts [C] and the data's class prior [C] (sums to 1):
    images, entropy (bits), the `top` classes by count with their lift (share in the band / share in the data)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    share = counts / total if total else np.zeros_like(counts)
    nonzero = share[share > 0]
    order = np.argsort(-counts, kind="stable")[:top]
    order = order[counts[order] > 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(prior[order] > 0, share[order] / prior[order], np.nan)
    return {
        "images": int(total),
        "entropy": float(-(nonzero * np.log2(nonzero)).sum()) + 0.0,  # + 0.0: no -0.0 for a pure band
        "top_classes": order.tolist(),
        "top_counts": counts[order].astype(np.int64).tolist(),
        "top_lift": lift.tolist(),
    }
