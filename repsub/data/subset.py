"""A seeded, class-balanced subset of a labelled dataset (importance runs on a few images per class)."""

from __future__ import annotations

import numpy as np

from repsub.errors import UsageError


def balanced_subset(labels: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `count` images, as equal a number per class as the classes allow.

    Images are shared out evenly over the classes (the remainder to the first classes of a seeded order);
    a class with fewer images than its share gives all it has and the others make up the difference.
    Each class's images are drawn without replacement with `seed`. `count` None: every image; a count
    larger than the dataset: every image.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if count is None:
        return np.arange(len(labels))
    if count < 1:
        raise UsageError(f"--images must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    classes, available = np.unique(labels, return_counts=True)
    order = rng.permutation(len(classes))
    quota = np.zeros(len(classes), dtype=np.int64)
    remaining = min(count, len(labels))
    while remaining:
        still = [c for c in order if quota[c] < available[c]]
        share, extra = divmod(remaining, len(still))
        for position, c in enumerate(still):
            given = min(share + (position < extra), available[c] - quota[c])
            quota[c] += given
            remaining -= given
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
