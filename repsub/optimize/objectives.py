"""The objectives, vectorized over a batch where image b is optimized for unit units[b].

Each returns one value per image; maximizing their sum maximizes each image's own objective,
since image b's objective depends on image b alone.
"""

from __future__ import annotations

import torch


def activation(layer: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """AM: the unit's own activation x_i. layer [B, N], units [B] -> [B]."""
    return layer.gather(1, units.reshape(-1, 1)).squeeze(1)


def inter_unit(layer: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """IAM: x_i - mean_{j != i} x_j over the units of the same layer. layer [B, N], units [B] -> [B]."""
    own = activation(layer, units)
    others = (layer.sum(dim=1) - own) / (layer.shape[1] - 1)
    return own - others


METHODS = {"am": activation, "iam": inter_unit}
