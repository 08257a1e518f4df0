"""Representative Substitution (RS), arXiv 1811.11053.

RS(i) = |{j : x_j > x_i}| / N, where x is the activation vector of unit i's whole layer (all N
units, i included) on unit i's own generated image. Strictly greater: ties do not count. RS = 0
means no unit of the layer responds more strongly to the image made for unit i.
"""

from __future__ import annotations

import torch


def representative_substitution(layer_activations: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """RS for a batch: layer_activations [B, N] (row b is the layer on unit units[b]'s image) -> [B] float64."""
    if layer_activations.dim() != 2:
        raise ValueError(f"layer activations must be [B, N], got {tuple(layer_activations.shape)}")
    units = units.to(layer_activations.device, torch.int64).reshape(-1, 1)
    own = layer_activations.gather(1, units)
    higher = (layer_activations > own).sum(dim=1)
    return higher.to(torch.float64) / layer_activations.shape[1]


def rs_ties(layer_activations: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The fraction of the *other* units (N - 1 of them) whose activation equals the unit's, [B] float64.

    RS counts strictly greater activations only, so tied units (typically a whole layer at 0 on an image
    that drives nothing) leave RS low without meaning anything: readers need to see the ties."""
    units = units.to(layer_activations.device, torch.int64).reshape(-1, 1)
    own = layer_activations.gather(1, units)
    equal = (layer_activations == own).sum(dim=1) - 1  # the unit itself is always equal
    return equal.to(torch.float64) / max(layer_activations.shape[1] - 1, 1)
