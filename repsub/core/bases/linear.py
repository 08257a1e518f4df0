"""The bases that need no solver: `unit` (the identity), `random` (a seeded orthonormal rotation: the control)
and `vectors` (the user's own directions)."""

from __future__ import annotations

import torch

from repsub.core.bases.basis import Basis, orient_signs
from repsub.errors import UsageError, shown


def unit_basis(layer: str, n_channels: int) -> Basis:
    """The identity: direction k is unit k, its response the unit's activation at the position."""
    eye = torch.eye(n_channels)
    zeros = torch.zeros(n_channels)
    return Basis(
        kind="unit", layer=layer, directions=eye, encoder_weight=eye, encoder_bias=zeros, center=zeros
    )


def random_rotation(n_channels: int, size: int, seed: int) -> torch.Tensor:
    """`size` orthonormal rows [size, C] of a Haar-random rotation: QR of a seeded Gaussian matrix, with the signs
    of R's diagonal moved into Q (without them QR's sign convention biases the draw)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n_channels, n_channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.T[:size].contiguous()


def random_basis(
    layer: str, n_channels: int, size: int, seed: int, sample: torch.Tensor | None = None
) -> Basis:
    """A seeded random rotation of the units (uncentred, as the units are): `size` <= C orthonormal directions,
    oriented by `orient_signs` on `sample` [N, C] when given."""
    rows = random_rotation(n_channels, size, seed)
    if sample is not None:
        rows = rows * orient_signs(sample.to(torch.float64) @ rows.T)[:, None].to(torch.float64)
    return Basis(
        kind="random", layer=layer, directions=rows, encoder_weight=rows, encoder_bias=torch.zeros(size),
        center=torch.zeros(n_channels), settings={"seed": seed},
    )  # fmt: skip


def vectors_basis(layer: str, vectors, n_channels: int, source: str = "vectors") -> Basis:
    """The user's directions `vectors` [K, C] as given (not normalized, not reoriented): the response is the
    dot product x · v_k; decoding is least squares (the decoder rows are pinv(Vᵀ), the projection on their span).
    `source` names where they came from in messages."""
    v = torch.as_tensor(vectors)
    if v.dtype.is_complex or not (v.dtype.is_floating_point or v.dtype in (torch.int32, torch.int64)):
        raise UsageError(f"{source}: directions must be real numbers, got dtype {v.dtype}")
    if v.dim() != 2:
        raise UsageError(f"{source}: directions must be a K x C matrix, got shape {tuple(v.shape)}")
    if v.shape[1] != n_channels:
        raise UsageError(
            f"{source}: directions of {v.shape[1]} values; layer {layer} has C = {n_channels} (expected shape "
            f"K x {n_channels}, got {tuple(v.shape)})"
        )
    if v.shape[0] < 1:
        raise UsageError(f"{source}: no directions (shape {tuple(v.shape)})")
    v = v.to(torch.float64)
    if not torch.isfinite(v).all():
        bad = (~torch.isfinite(v)).any(dim=1).nonzero().flatten().tolist()
        raise UsageError(f"{source}: non-finite values in direction(s) {shown(bad)}")
    zero = (v.norm(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise UsageError(f"{source}: direction(s) {shown(zero)} are all zeros")
    decoder = torch.linalg.pinv(v.T)  # [K, C]: x_hat = (x Vᵀ) pinv(Vᵀ), the least-squares reconstruction
    return Basis(
        kind="vectors", layer=layer, directions=decoder, encoder_weight=v, encoder_bias=torch.zeros(len(v)),
        center=torch.zeros(n_channels), settings={"source": source},
    )  # fmt: skip
