"""PCA, exact and mergeable: float64 sums of n, x and x xᵀ over the data, then an eigendecomposition.

Two `PcaSums` over disjoint data merge exactly as the selectivity pass's class sums do (sums add), so a dataset
split into shards anywhere gives the covariance of the unsplit data (to float64 rounding). The basis is the top
K eigenvectors of the covariance (torch.linalg.eigh, float64), responses are the centred projections, and each
direction is oriented by `orient_signs` on the fit sample when one is given.

A component whose variance is zero to rounding (a layer with dead channels has C - rank of them) is a *null*
direction: the data do not determine it (any rotation within the null space fits as well), and its response on
any input is rounding noise, 1e-13 to 1e-33 on the digits CNN, that made it look alive and made its AM "fail"
(all 51 pca failures there). Its encoder row is zero, so its response is exactly 0: it is dead on the data and
left out as such; it still decodes (its direction is kept), and `settings["null_directions"]` counts them.
"""

from __future__ import annotations

import torch

from repsub.core.bases.basis import Basis, orient_signs


class PcaSums:
    """n, sum x [C] and sum x xᵀ [C, C] in float64."""

    def __init__(self, n_channels: int, device: str | torch.device = "cpu"):
        self.n = 0
        self.sum = torch.zeros(n_channels, dtype=torch.float64, device=device)
        self.outer = torch.zeros(n_channels, n_channels, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> PcaSums:
        """Add activation vectors x [..., C]."""
        x = x.detach().reshape(-1, self.sum.shape[0]).to(self.sum.device, torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(dim=0)
        self.outer += x.T @ x
        return self

    def merge(self, other: PcaSums) -> PcaSums:
        """Add another shard's sums into these (exact: sums of disjoint data)."""
        if other.sum.shape != self.sum.shape:
            raise ValueError(f"cannot merge sums of {other.sum.shape[0]} and {self.sum.shape[0]} channels")
        self.n += other.n
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def covariance(self) -> torch.Tensor:
        """The population covariance, sum x xᵀ / n - mean meanᵀ, float64 [C, C]."""
        if self.n < 2:
            raise ValueError(f"a covariance needs two vectors or more, got {self.n}")
        mean = self.mean
        return self.outer / self.n - torch.outer(mean, mean)

    def state_dict(self) -> dict:
        return {"n": self.n, "sum": self.sum.cpu(), "outer": self.outer.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> PcaSums:
        sums = cls(state["sum"].shape[0])
        sums.n = int(state["n"])
        sums.sum += state["sum"].to(torch.float64)
        sums.outer += state["outer"].to(torch.float64)
        return sums


def principal_components(sums: PcaSums, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(components [K, C], variances [K]) float64: the top `size` eigenvectors of the covariance, largest
    eigenvalue first."""
    variances, vectors = torch.linalg.eigh(sums.covariance())  # ascending
    order = torch.argsort(variances, descending=True)[:size]
    return vectors[:, order].T.contiguous(), variances[order]


def null_tolerance(sums: PcaSums) -> float:
    """The variance at or below which a component is null: C * (float32 eps² + float64 eps) * the largest mean
    square x_c².

    The activation vectors come as float32: each value is rounded to within eps32 |x_c|, so a vector's rounding
    has a squared norm up to eps32² sum_c x_c² <= C eps32² max E[x_c²], and a direction with less variance than
    that is the inputs' rounding (on the demo's conv4, a component of variance 5e-13 of the total, class means of
    1e-7 and a "selectivity" of 4.1: docs/science.md, 5c). The covariance's own float64 rounding (sum x xᵀ / n -
    mean meanᵀ) is at most about eps64 * max E[x_c²] per entry, C times that in an eigenvalue."""
    second = torch.diagonal(sums.outer) / max(sums.n, 1)
    rounding = torch.finfo(torch.float32).eps ** 2 + torch.finfo(torch.float64).eps
    return float(len(second) * rounding * second.max().clamp(min=0))


def pca_basis(layer: str, sums: PcaSums, size: int, sample: torch.Tensor | None = None) -> Basis:
    """The PCA basis of `size` directions from `sums`; `sample` [N, C] (the fit vectors) orients the signs."""
    components, variances = principal_components(sums, size)
    mean = sums.mean
    if sample is not None:
        signs = orient_signs((sample.to(torch.float64) - mean) @ components.T)
        components = components * signs[:, None].to(torch.float64)
    total = torch.diagonal(sums.covariance()).sum()
    null = variances <= null_tolerance(sums)
    encoder = components.masked_fill(null[:, None], 0.0)
    settings = {
        "n_vectors": sums.n,
        "explained_variance_ratio": (variances / total).tolist() if total > 0 else [0.0] * size,
        "orientation": "third moment" if sample is not None else "eigh",
        "null_directions": int(null.sum()),  # zero variance: encoder row 0, response exactly 0 (dead)
    }
    return Basis(
        kind="pca", layer=layer, directions=components, encoder_weight=encoder,
        encoder_bias=torch.zeros(size), center=mean, settings=settings,
    )  # fmt: skip
