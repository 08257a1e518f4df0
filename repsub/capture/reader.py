"""Reading units: forward hooks that capture layers, stop the forward early and reduce space.

The hook reduces (or clones) a layer's output the moment it is produced, so an inplace op that
runs later (torchvision's ``ReLU(inplace=True)``) cannot change what was captured, and gradients
flow through the captured values. Once every requested layer is captured the forward stops:
nothing past the deepest requested layer is computed.

A module called several times in one forward (ResNet's BasicBlock calls its ReLU twice) is read at its
last call: the catalog's probe counted the calls (`UnitLayer.calls`), the hook counts them again and
captures the last; a forward that calls it another number of times is an error naming the module.

Reading and editing are one mechanism (as baukit's `Trace(edit_output=...)`): `edits` maps a layer to a
function of its output whose result replaces the output from then on (importance by ablation zeroes a
unit there), and `forward` returns the model's output under the edits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from repsub.errors import UsageError
from repsub.models import UnitLayer

REDUCTIONS = ("mean", "max", "center")
TOKENS_HAVE_NO_CENTER = (
    "--reduce center is not defined for token layers ([B, T, D], e.g. ViT's encoder layers): use mean or max"
)


class _StopForward(Exception):
    """Raised by a hook once all requested layers are captured, to end the forward there."""


def reduce_units(output: torch.Tensor, kind: str, reduce: str) -> torch.Tensor:
    """A layer's output as one activation per unit: [B, N] (repsub.models.KINDS). Conv channels ([B, C, H, W],
    or [B, H, W, C] for "nhwc") are reduced over space: the mean, the max, or the centre position (H//2, W//2);
    a "tokens" layer [B, T, D] over its tokens (mean or max); a "linear" layer is read as it is.

    Always a new tensor (a later inplace op cannot change it), in float32 at least: a bf16 map is
    reduced in float32, so low-precision forwards do not round the unit activations to 8 bits."""
    if output.dtype in (torch.bfloat16, torch.float16):
        output = output.float()
    if kind == "linear":
        return output.flatten(1).clone()
    if reduce not in REDUCTIONS:
        raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
    if kind == "tokens":  # [B, T, D]: over the tokens (the class token included, where there is one)
        if reduce == "center":
            raise UsageError(TOKENS_HAVE_NO_CENTER)
        return output.mean(dim=1) if reduce == "mean" else output.amax(dim=1)
    if kind == "nhwc":  # [B, H, W, C] (Swin's stages)
        output = output.permute(0, 3, 1, 2)
    elif kind != "conv":
        raise ValueError(f"unknown layer kind {kind!r}")
    if reduce == "mean":
        return output.mean(dim=(2, 3))
    if reduce == "max":
        return output.amax(dim=(2, 3))
    return output[:, :, output.shape[2] // 2, output.shape[3] // 2].clone()


class _Capture:
    """The forward hook of one layer: counts the module's calls and, at the last one, keeps its units (and the
    pre-activation the ReLU hook saw). The one place where a layer's output passes by: an edit of the output
    (ablation) would be returned from here."""

    def __init__(self, reader: LayerReader, layer: UnitLayer, state: _ForwardState):
        self.reader, self.layer, self.state = reader, layer, state
        self.calls = 0

    def __call__(self, _module, _inputs, output):
        self.calls += 1
        if self.calls != self.layer.calls:
            return None  # not yet the module's last call in this forward
        name = self.layer.name
        edit = self.reader.edits.get(name)
        if edit is not None:
            output = edit(output)
        self.state.captured[name] = self.reader._units(output, self.layer.kind)
        if self.state.pre is not None and self.layer.relu is not None:
            self.state.pre[name] = self.state.relu_inputs[self.layer.relu]
        if self.reader.stop and len(self.state.captured) == len(self.reader.layers):
            raise _StopForward
        return output if edit is not None else None


class _ForwardState:
    def __init__(self, with_pre: bool):
        self.captured: dict[str, torch.Tensor] = {}
        self.pre: dict[str, torch.Tensor] | None = {} if with_pre else None
        self.relu_inputs: dict[str, torch.Tensor] = {}  # ReLU path -> its latest input, reduced


class LayerReader:
    """Runs a model and returns the requested layers' unit activations, stopping after the deepest.

    >>> reader = LayerReader(model, [layer_a, layer_b], reduce="mean")
    >>> acts = reader(images)  # {"conv1_1": [B, 64], ...}

    With ``reduce=None`` conv layers come back as full maps [B, C, H, W] (cloned).
    ``reader.read(images)`` also returns the layers' pre-activations (see `read`). With ``edits``
    ({layer name: function of the layer's output}) the edited output replaces the layer's output, and
    ``reader.forward(images)`` (``stop=False``) returns the model's output under the edits.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[UnitLayer],
        reduce: str | None = "mean",
        stop: bool = True,
        edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        pre_reduce: str | None = None,
    ):
        if reduce is not None and reduce not in REDUCTIONS:
            raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
        if not layers:
            raise ValueError("LayerReader needs at least one layer")
        if reduce == "center" and any(layer.kind == "tokens" for layer in layers):
            raise UsageError(TOKENS_HAVE_NO_CENTER)
        self.model = model
        self.layers = list(layers)
        if pre_reduce is not None and (reduce is None or pre_reduce not in REDUCTIONS):
            raise UsageError(
                f"unknown pre-activation reduction {pre_reduce!r}; valid: {', '.join(REDUCTIONS)}"
            )
        self.reduce = reduce
        self.pre_reduce = pre_reduce or reduce  # read()'s pre-activations: by default reduced as the units
        self.stop = stop
        self.edits = dict(edits or {})
        unknown = sorted(set(self.edits) - {layer.name for layer in self.layers})
        if unknown:
            raise ValueError(f"edits of layer(s) {unknown} that are not read")
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

    def _relu_input_hook(self, path: str, kind: str, state: _ForwardState):
        # Reduced before the ReLU runs: an inplace ReLU overwrites its input. A spatial max keeps its input for
        # the backward, so it gets a copy the ReLU cannot overwrite.
        def hook(_module, inputs):
            if self.pre_reduce is None:
                state.relu_inputs[path] = inputs[0].clone()
                return
            pre = inputs[0].clone() if self.pre_reduce == "max" and inputs[0].requires_grad else inputs[0]
            state.relu_inputs[path] = reduce_units(pre, kind, self.pre_reduce)

        return hook

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(images, with_pre=False)[0]

    def read(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(post, pre): the layers' unit activations as `__call__` returns them, and for each layer read
        after a ReLU its pre-activation (the ReLU's input, on its last call within the layer's module),
        reduced the same way (or by `pre_reduce` where given). Layers without a ReLU (logits, raw module
        outputs) are absent from `pre`."""
        return self._run(images, with_pre=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the model's output, the layers' unit activations), with the edits applied; needs stop=False."""
        if self.stop:
            raise ValueError("forward() runs the whole model: build the reader with stop=False")
        return self._run(images, with_pre=False, keep_output=True)

    def _run(self, images: torch.Tensor, with_pre: bool, keep_output: bool = False):
        state = _ForwardState(with_pre)
        captures = [_Capture(self, layer, state) for layer in self.layers]
        handles = [self._modules[c.layer.module].register_forward_hook(c) for c in captures]
        if with_pre:
            relus = {layer.relu: layer.kind for layer in self.layers if layer.relu is not None}
            handles += [
                self._modules[path].register_forward_pre_hook(self._relu_input_hook(path, kind, state))
                for path, kind in relus.items()
            ]
        output = None
        try:
            output = self.model(images)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if len(state.captured) != len(self.layers):
            raise RuntimeError(
                "the forward did not reach layer(s) "
                + ", ".join(
                    f"{c.layer.name} (module {c.layer.module} ran {c.calls} time(s), its catalog expects "
                    f"{c.layer.calls})"
                    for c in captures
                    if c.layer.name not in state.captured
                )
            )
        if keep_output:
            return output, state.captured
        return state.captured, (state.pre if state.pre is not None else {})
