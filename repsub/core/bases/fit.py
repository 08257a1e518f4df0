"""One entry point for every kind of basis, with the size each kind allows.

    basis = fit_basis("pca", "conv3", fit_vectors, size=32, seed=0)

`fit_vectors` [N, C] are activation vectors of the layer sampled from the data (repsub.capture.positions); pca
may be given exact `sums` over more data (repsub.core.bases.pca.PcaSums), merged across shards.
"""

from __future__ import annotations

import torch

from repsub.core.bases.basis import Basis
from repsub.core.bases.ica import ica_basis
from repsub.core.bases.kmeans import kmeans_basis
from repsub.core.bases.linear import random_basis, unit_basis, vectors_basis
from repsub.core.bases.nmf import nmf_basis
from repsub.core.bases.pca import PcaSums, pca_basis
from repsub.core.bases.sae import sae_basis
from repsub.errors import UsageError

# kind -> what it is and which library fits it (README, "Bases")
KINDS = {
    "unit": "the identity: the units themselves (the default everywhere)",
    "random": "a seeded random rotation, orthonormal (torch QR): the control",
    "pca": "exact principal components from float64 sums of x and x xᵀ (torch eigh), mergeable over shards",
    "ica": "FastICA after whitening (scikit-learn) on a sample",
    "nmf": "non-negative factorization of post-ReLU activations (scikit-learn NMF) on a sample",
    "kmeans": "cosine k-means on L2-normalized vectors (scikit-learn KMeans); response x · centroid",
    "sae": "TopK sparse autoencoder with AuxK against dead latents (torch, repsub.core.bases.sae)",
    "vectors": "your own directions from a .npy or .pt file, K x C",
}
DEFAULT_EXPANSION = 4  # sae: K = expansion x C


def default_size(kind: str, n_channels: int, expansion: int = DEFAULT_EXPANSION) -> int:
    """K when not given: the layer's unit count C (kmeans too), expansion x C for sae."""
    return expansion * n_channels if kind == "sae" else n_channels


def default_top_k(n_channels: int) -> int:
    """The sae's active latents per position when not given: C / 8 (at least 1)."""
    return max(1, n_channels // 8)


def check_size(kind: str, layer: str, size: int, n_channels: int, n_vectors: int | None = None) -> int:
    """Refuse a K the kind does not allow on a layer of C channels (named, with the limit)."""
    if kind not in KINDS:
        raise UsageError(f"unknown basis kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"--size must be a positive integer, got {size!r}")
    if kind == "unit" and size != n_channels:
        raise UsageError(f"--size {size}: the unit basis of {layer} has exactly C = {n_channels} directions")
    if kind in ("random", "pca", "ica", "nmf") and size > n_channels:
        raise UsageError(
            f"--size {size} is larger than {kind} allows on {layer}: K <= C = {n_channels} (its channels at "
            "one position)"
        )
    if kind in ("ica", "kmeans") and n_vectors is not None and size > n_vectors:
        raise UsageError(
            f"--size {size}: {kind} on {layer} needs at least K activation vectors to fit, the sample holds "
            f"{n_vectors}: give a smaller --size or more --positions or images"
        )
    return size


def fit_basis(
    kind: str,
    layer: str,
    fit_vectors: torch.Tensor,
    size: int | None = None,
    seed: int = 0,
    *,
    sums: PcaSums | None = None,
    top_k: int | None = None,
    expansion: int = DEFAULT_EXPANSION,
    vectors=None,
    vectors_source: str = "vectors",
    sae_training: dict | None = None,
) -> Basis:
    """A basis of `kind` for `layer`, fitted on `fit_vectors` [N, C] with `seed` (module docstring).

    `size` K defaults to `default_size`; `sums` (pca) the exact sums of the fit vectors; `top_k` (sae) defaults
    to C / 8; `vectors` [K, C] are the directions of a `vectors` basis."""
    n_channels = fit_vectors.shape[-1]
    if kind == "vectors":
        if vectors is None:
            raise UsageError("a vectors basis needs its directions: --vectors FILE (.npy or .pt, K x C)")
        return vectors_basis(layer, vectors, n_channels, vectors_source)
    size = check_size(kind, layer, size or default_size(kind, n_channels, expansion), n_channels,
                      len(fit_vectors))  # fmt: skip
    if kind == "unit":
        return unit_basis(layer, n_channels)
    if kind == "random":
        return random_basis(layer, n_channels, size, seed, fit_vectors)
    if kind == "pca":
        return pca_basis(layer, sums or PcaSums(n_channels).add(fit_vectors), size, fit_vectors)
    if kind == "ica":
        return ica_basis(layer, fit_vectors, size, seed)
    if kind == "nmf":
        return nmf_basis(layer, fit_vectors, size, seed)
    if kind == "kmeans":
        return kmeans_basis(layer, fit_vectors, size, seed)
    top_k = top_k or default_top_k(n_channels)
    if not 1 <= top_k <= size:
        raise UsageError(f"--top-k {top_k}: the sae keeps 1 to K = {size} latents per position")
    return sae_basis(layer, fit_vectors, size, top_k, seed, **(sae_training or {}))
