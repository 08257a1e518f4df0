"""Ablating units: a unit's whole output (a conv channel's full map, a linear neuron) set to one value.

`zero` sets it to 0 (Morcos et al. 2018); `mean` to the unit's mean activation over the data (its map's
mean over images and positions), which removes the unit's information without shifting the layer's
mean input to the next one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repsub.errors import UsageError

ABLATIONS = ("zero", "mean")
UNIT_AXIS = {"conv": 1, "linear": 1}  # where a layer kind keeps its units in the read module's output


def unit_axis(kind: str) -> int:
    if kind not in UNIT_AXIS:
        raise UsageError(
            f"ablation is not defined for layers of kind {kind!r}; it is for {', '.join(UNIT_AXIS)}"
        )
    return UNIT_AXIS[kind]


def ablate(output: torch.Tensor, unit: int, value: float, kind: str) -> torch.Tensor:
    """A copy of a batch's output at the layer with `unit` set to `value` everywhere."""
    edited = output.clone()
    edited.select(unit_axis(kind), unit).fill_(value)
    return edited


def ablated_copies(
    output: torch.Tensor, units: Sequence[int], values: torch.Tensor, kind: str
) -> torch.Tensor:
    """[K * B, ...]: K copies of the batch `output` [B, ...], copy k with unit units[k] set to values[k]."""
    axis = unit_axis(kind)
    count = len(units)
    copies = output.unsqueeze(0).repeat(count, *([1] * output.dim()))  # [K, B, ...]
    index = [slice(None)] * copies.dim()
    index[0] = torch.arange(count, device=output.device)
    index[axis + 1] = torch.as_tensor(list(units), device=output.device)
    # Advanced indices on dims 0 and axis+1 come first in the selection: [K, B, (the rest)].
    fill = values.to(copies.dtype).reshape(count, *([1] * (copies.dim() - 2)))
    copies[tuple(index)] = fill
    return copies.flatten(0, 1)
