"""AM's shortcut: at the target layer, compute only each image's own unit.

AM's objective for image b reads unit units[b] alone (its post-ReLU value, or the pre-ReLU value while
the unit is silent: objectives.own_term), so the other N-1 outputs of the target layer get no gradient.
Where the layer is ``ReLU(Conv2d(x))`` or ``ReLU(Linear(x))`` (adjacent in an nn.Sequential, as in VGG),
the steps run the network up to the layer's input and then the layer with only the batch's own filters
(rows of the weight): B outputs instead of N, a fraction B/N of the layer's arithmetic, forward and
backward (VGG16 conv3_3 at batch 64: a quarter of that convolution, about a fifth of a step). Image b
takes output b of its own filter: the values the whole layer would give, up to float rounding.

Only the steps use it; the start and the recorded forward read the whole layer (RS needs every unit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repsub.capture.reader import reduce_units
from repsub.models import UnitLayer


class _Stop(Exception):
    """Raised by the hook on the layer's input: nothing past it is computed."""


class OwnUnit:
    """The target layer of an AM batch, computed for each image's own unit only."""

    def __init__(self, model: nn.Module, layer: nn.Conv2d | nn.Linear, kind: str):
        self.model, self.layer, self.kind = model, layer, kind

    @classmethod
    def find(cls, model: nn.Module, layer: UnitLayer, batch: int) -> OwnUnit | None:
        """The shortcut for `layer`, or None where it does not apply (another structure, or a batch as large
        as the layer: nothing to save)."""
        if batch >= layer.n_units or layer.read != "relu" or layer.relu != layer.module or layer.calls != 1:
            return None
        parent_path, _, name = layer.relu.rpartition(".")
        parent = model.get_submodule(parent_path)
        if not isinstance(parent, nn.Sequential) or not isinstance(parent._modules.get(name), nn.ReLU):
            return None
        names = list(parent._modules)
        position = names.index(name)
        if position == 0:
            return None
        before = parent._modules[names[position - 1]]
        if isinstance(before, nn.Conv2d) and before.groups == 1 and before.padding_mode == "zeros":
            return cls(model, before, "conv") if layer.kind == "conv" else None
        if isinstance(before, nn.Linear):
            return cls(model, before, "linear") if layer.kind == "linear" else None
        return None

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(_module, inputs):
            captured.append(inputs[0])
            raise _Stop

        handle = self.layer.register_forward_pre_hook(hook)
        try:
            self.model(images)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the forward never reached the target layer")
        return captured[0]

    def read(
        self, images: torch.Tensor, units: torch.Tensor, reduce: str, pre_reduce: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(post, pre): each image's own unit after and before the ReLU, reduced as the layer's units are
        (the pre-activation by `pre_reduce` where given, as LayerCapture's): [B, 1] each, so that unit 0 of
        this one-unit layer is the image's own."""
        x = self._input(images)
        bias = self.layer.bias[units] if self.layer.bias is not None else None
        if self.kind == "conv":
            conv = self.layer
            out = F.conv2d(x, conv.weight[units], bias, conv.stride, conv.padding, conv.dilation)
        else:
            out = F.linear(x, self.layer.weight[units], bias)
        # Image b through its own filter b: the diagonal of [B, B, ...], a view (moved to dim 0), no copy.
        pre = out.diagonal(dim1=0, dim2=1).movedim(-1, 0).unsqueeze(1)  # [B, 1, ...]
        return reduce_units(F.relu(pre), self.kind, reduce), reduce_units(
            pre, self.kind, pre_reduce or reduce
        )
