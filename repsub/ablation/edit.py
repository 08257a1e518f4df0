"""Ablating units: a unit's whole output (a conv channel's full map, a linear neuron) set to one value.

`zero` sets it to 0 (Morcos et al. 2018); `mean` to the unit's mean activation over the data (its map's
mean over images and positions), which removes the unit's information without shifting the layer's
mean input to the next one.

A basis's direction k is ablated by replacing its response z_k at every position by the value v (0, or its
mean response over the data) and the layer's values x by x + decode(z with z_k = v) - decode(z): what the
basis does not reconstruct (its error) stays. For orthonormal directions (a linear readout) that is
x - (z_k - v) d_k, the direction's component removed (or set to its mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repsub.capture.reader import channels_last, restore_layout
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


def ablated_direction_copies(
    output: torch.Tensor, readout, directions: Sequence[int], values: torch.Tensor, kind: str
) -> torch.Tensor:
    """[J * B, ...]: J copies of the batch `output` [B, ...], copy j with direction directions[j] of `readout`
    set to values[j] at every position (module doc), in the layer's own layout."""
    x = channels_last(output, kind)  # [B, ..., C]
    z = readout.encode(x)[0]  # [B, ..., K]
    count = len(directions)
    edited = z.unsqueeze(0).repeat(count, *([1] * z.dim()))  # [J, B, ..., K]
    rows = torch.arange(count, device=z.device)
    columns = torch.as_tensor(list(directions), device=z.device)
    # edited[j, ..., directions[j]] = values[j]: the direction's axis moved next to the copies' axis.
    moved = edited.movedim(-1, 1)  # [J, K, B, ...], a view
    moved[rows, columns] = values.to(z.dtype).reshape(count, *([1] * (moved.dim() - 2)))
    copies = x.unsqueeze(0) + readout.decode(edited) - readout.decode(z).unsqueeze(0)  # [J, B, ..., C]
    return restore_layout(copies.flatten(0, 1), kind).to(output.dtype)


def ablate_direction(output: torch.Tensor, readout, direction: int, value: float, kind: str) -> torch.Tensor:
    """A copy of a batch's output at the layer with `direction` of `readout` set to `value` (module doc)."""
    return ablated_direction_copies(output, readout, [direction], torch.tensor([value]), kind)
