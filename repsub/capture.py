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
    """A layer's output as one activation per unit: [B, N]. Conv channels are reduced over space.

    Always a new tensor (a later inplace op cannot change it), in float32 at least: a bf16 map is
    reduced in float32, so low-precision forwards do not round the unit activations to 8 bits."""
    if output.dtype in (torch.bfloat16, torch.float16):
        output = output.float()
    if kind == "linear":
        return output.flatten(1).clone()
    if reduce == "mean":
        return output.mean(dim=(2, 3))
    if reduce == "max":
        return output.amax(dim=(2, 3))
    if reduce == "center":
        return output[:, :, output.shape[2] // 2, output.shape[3] // 2].clone()
    raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")


class LayerReader:
    """Runs a model and returns the requested layers' unit activations, stopping after the deepest.

    >>> reader = LayerReader(model, [layer_a, layer_b], reduce="mean")
    >>> acts = reader(images)  # {"conv1_1": [B, 64], ...}

    With ``reduce=None`` conv layers come back as full maps [B, C, H, W] (cloned).
    ``reader.read(images)`` also returns the layers' pre-activations (see `read`).
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
        missing = [
            path
            for layer in self.layers
            for path in (layer.module, layer.relu)
            if path is not None and path not in self._modules
        ]
        if missing:
            raise ValueError(f"model has no module(s) {missing}")

    def _units(self, tensor: torch.Tensor, kind: str) -> torch.Tensor:
        return tensor.clone() if self.reduce is None else reduce_units(tensor, kind, self.reduce)

    def _hook(self, layer: UnitLayer, captured: dict, pre: dict | None, latest_relu_input: dict):
        def hook(_module, _inputs, output):
            if layer.name in captured:
                return  # a module called twice in one forward: the first call is the layer's
            captured[layer.name] = self._units(output, layer.kind)
            if pre is not None and layer.relu is not None:
                pre[layer.name] = latest_relu_input[layer.relu]
            if self.stop and len(captured) == len(self.layers):
                raise _StopForward

        return hook

    def _relu_input_hook(self, path: str, kind: str, latest_relu_input: dict):
        # Reduced before the ReLU runs: an inplace ReLU overwrites its input.
        def hook(_module, inputs):
            latest_relu_input[path] = self._units(inputs[0], kind)

        return hook

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(images, with_pre=False)[0]

    def read(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(post, pre): the layers' unit activations as `__call__` returns them, and for each layer read
        after a ReLU its pre-activation (the ReLU's input, on its last call within the layer's module),
        reduced the same way. Layers without a ReLU (logits, raw module outputs) are absent from `pre`."""
        return self._run(images, with_pre=True)

    def _run(self, images: torch.Tensor, with_pre: bool):
        captured: dict[str, torch.Tensor] = {}
        pre: dict[str, torch.Tensor] | None = {} if with_pre else None
        latest_relu_input: dict[str, torch.Tensor] = {}
        handles = [
            self._modules[layer.module].register_forward_hook(
                self._hook(layer, captured, pre, latest_relu_input)
            )
            for layer in self.layers
        ]
        if with_pre:
            relus = {layer.relu: layer.kind for layer in self.layers if layer.relu is not None}
            handles += [
                self._modules[path].register_forward_pre_hook(
                    self._relu_input_hook(path, kind, latest_relu_input)
                )
                for path, kind in relus.items()
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
        return captured, (pre if pre is not None else {})
