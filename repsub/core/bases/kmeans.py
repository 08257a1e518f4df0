"""Cosine k-means: scikit-learn's KMeans on the L2-normalized activation vectors (all-zero vectors left out: they
have no direction). The directions are the centroids, normalized; a response is the dot product x · c_k (the
vector's length times its cosine with the centroid). A position decodes as its projection on the best-matching
centroid (`Basis.decode_top1`): gain-shape vector quantization."""

from __future__ import annotations

import torch

from repsub.core.bases.basis import Basis
from repsub.errors import UsageError

N_INIT = 4


def kmeans_basis(layer: str, sample: torch.Tensor, size: int, seed: int) -> Basis:
    from sklearn.cluster import KMeans

    x = sample.detach().cpu().to(torch.float64)
    norms = x.norm(dim=1)
    directions = x[norms > 0] / norms[norms > 0, None]
    if len(directions) < size:
        raise UsageError(
            f"kmeans on {layer}: {size} centroids need as many non-zero activation vectors, the fit sample "
            f"holds {len(directions)}: give a smaller --size or more --positions or images"
        )
    fitted = KMeans(n_clusters=size, n_init=N_INIT, random_state=seed).fit(directions.numpy())
    centroids = torch.from_numpy(fitted.cluster_centers_)
    centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
    settings = {"seed": seed, "n_vectors": len(x), "n_zero_vectors": int((norms == 0).sum()),
                "inertia": float(fitted.inertia_), "iterations": int(fitted.n_iter_),
                "solver": "sklearn.cluster.KMeans"}  # fmt: skip
    return Basis(
        kind="kmeans", layer=layer, directions=centroids, encoder_weight=centroids,
        encoder_bias=torch.zeros(size), center=torch.zeros(x.shape[1]), decode_top1=True, settings=settings,
    )  # fmt: skip
