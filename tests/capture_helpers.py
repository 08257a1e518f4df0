"""A small hand-made network for the capture tests: its unit layers, and its forward written out by hand."""

from __future__ import annotations

import torch
from torch import nn

from repsub.models import UnitLayer


def small_net() -> tuple[nn.Module, list[UnitLayer]]:
    """Conv -> inplace ReLU -> linear -> inplace ReLU -> logits, with a conv unit layer, a linear one and the
    logits (which have no ReLU)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 25, 6),
        nn.ReLU(inplace=True), nn.Linear(6, 2),
    )  # fmt: skip
    layers = [
        UnitLayer("c", 4, "1", "conv", read="relu", relu="1"),
        UnitLayer("f", 6, "4", "linear", read="relu", relu="4"),
        UnitLayer("l", 2, "5", "linear", read="logits"),
    ]
    return model, layers


def small_net_by_hand(model: nn.Module, x: torch.Tensor, edit=lambda f: f) -> dict[str, torch.Tensor]:
    """The small net's pre-activations and logits without hooks or inplace ops; `edit` changes f's output."""
    conv_pre = model[0](x)
    fc_pre = model[3](torch.relu(conv_pre).flatten(1))
    fc = edit(torch.relu(fc_pre))
    return {"conv_pre": conv_pre, "fc_pre": fc_pre, "fc": fc, "logits": model[5](fc)}
