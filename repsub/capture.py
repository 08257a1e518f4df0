"""Reading units: forward hooks that capture layers, stop the forward early and reduce space.

The hook reduces (or clones) a layer's output the moment it is produced, so an inplace op that
runs later (torchvision's ``ReLU(inplace=True)``) cannot change what was captured, and gradients
flow through the captured values. Once every requested layer is captured the forward stops:
nothing past the deepest requested layer is computed.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import UsageError
from .models import UnitLayer

REDUCTIONS = ("mean", "max", "center")


class _StopForward(Exception):
    """Raised by a hook once all requested layers are captured, to end the forward there."""


def reduce_units(output: torch.Tensor, kind: str, reduce: str) -> torch.Tensor:
    """A layer's output as one activation per unit: [B, N]. Conv channels are reduced over space."""
    if kind == "linear":
        return output.flatten(1) if output.dim() > 2 else output
    if reduce == "mean":
        return output.mean(dim=(2, 3))
    if reduce == "max":
        return output.amax(dim=(2, 3))
    if reduce == "center":
        return output[:, :, output.shape[2] // 2, output.shape[3] // 2]
    raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")


class LayerReader:
    """Runs a model and returns the requested layers' unit activations, stopping after the deepest.

    >>> reader = LayerReader(model, [layer_a, layer_b], reduce="mean")
    >>> acts = reader(images)  # {"conv1_1": [B, 64], ...}

    With ``reduce=None`` conv layers come back as full maps [B, C, H, W] (cloned).
    """

    def __init__(
        self, model: nn.Module, layers: list[UnitLayer], reduce: str | None = "mean", stop: bool = True
    ):
        if reduce is not None and reduce not in REDUCTIONS:
            raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
        if not layers:
            raise ValueError("LayerReader needs at least one layer")
        self.model = model
        self.layers = list(layers)
        self.reduce = reduce
        self.stop = stop
        self._modules = dict(model.named_modules())
        missing = [layer.module for layer in self.layers if layer.module not in self._modules]
        if missing:
            raise ValueError(f"model has no module(s) {missing}")

    def _hook(self, layer: UnitLayer, captured: dict[str, torch.Tensor]):
        def hook(_module, _inputs, output):
            if layer.name in captured:
                return  # a module called twice in one forward: the first call is the layer's
            if self.reduce is None:
                captured[layer.name] = output.clone()
            else:
                captured[layer.name] = reduce_units(output, layer.kind, self.reduce)
            if self.stop and len(captured) == len(self.layers):
                raise _StopForward

        return hook

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        handles = [
            self._modules[layer.module].register_forward_hook(self._hook(layer, captured))
            for layer in self.layers
        ]
        try:
            self.model(images)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if len(captured) != len(self.layers):
            absent = [layer.name for layer in self.layers if layer.name not in captured]
            raise RuntimeError(f"the forward never reached layer(s) {absent}")
        return captured
