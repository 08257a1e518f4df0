"""Capturing units: one context manager that hooks layers, stops the forward early and reduces space.

    with LayerCapture(model, layers, reduce="mean") as capture:  # hooks registered once, for the block
        for images in batches:
            units = capture(images).activations  # {layer name: [B, N]}

The hook reduces (or clones) a layer's output the moment it is produced, so an inplace op that
runs later (torchvision's ``ReLU(inplace=True)``) cannot change what was captured, and gradients
flow through the captured values. Once every requested layer is captured the forward stops:
nothing past the deepest requested layer is computed.

A module called several times in one forward (ResNet's BasicBlock calls its ReLU twice) is read at its
last call: the catalog's probe counted the calls (`UnitLayer.calls`), the hook counts them again and
captures the last; a forward that calls it another number of times is an error naming the module.

A layer can be read through a **readout** (repsub.core.readout: a basis of K directions): its output is
encoded per position (a conv map channels-last, [B, H, W, C] -> [B, H, W, K]; tokens [B, T, D] -> [B, T, K];
linear [B, N] -> [B, K]) and the K responses are reduced as units are. With ``pre=True`` the readout's own
pre-activation, or for a linear readout the readout of the layer's full pre-ReLU map, reduced after encoding.
An affine readout reduced by the mean or the centre (without pre) encodes the reduced values instead: the same
responses up to float rounding, once per image rather than once per position.

Reading and editing are one mechanism (as baukit's `Trace(edit_output=...)`): `edits` maps a layer to a
function of its output whose result replaces the output from then on (importance by ablation zeroes a
unit there), and ``output=True`` returns the model's output under the edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from repsub.core.bases.basis import topk_margin
from repsub.core.readout import check_readout, encode_with_pre, is_affine
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


# A layer's values per position, last: how each kind's output is encoded by a readout, and the kind of the
# responses (for `reduce_units`) once encoded.
ENCODED_KIND = {"conv": "nhwc", "nhwc": "nhwc", "tokens": "tokens", "linear": "linear"}


def channels_last(output: torch.Tensor, kind: str) -> torch.Tensor:
    """The layer's output with its values per position on the last dimension ([B, ..., C]), in float32 at
    least."""
    if output.dtype in (torch.bfloat16, torch.float16):
        output = output.float()
    if kind == "conv":
        return output.permute(0, 2, 3, 1)
    if kind == "linear":
        return output.flatten(1)
    return output


def restore_layout(values: torch.Tensor, kind: str) -> torch.Tensor:
    """`channels_last`'s inverse: a conv layer's [B, H, W, K] back to [B, K, H, W]."""
    return values.permute(0, 3, 1, 2) if kind == "conv" else values


def _side_by_side(parts: list[torch.Tensor], layer_kind: str) -> torch.Tensor:
    """The responses of a readout's parts as one tensor, joined on K: the last dimension, but dimension 1 of
    a conv layer's full maps [B, K, H, W]; a single part as it is."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim=1 if layer_kind == "conv" or parts[0].dim() == 2 else -1)


@dataclass(frozen=True)
class Captured:
    """What one forward through a `LayerCapture` gave."""

    activations: dict[
        str, torch.Tensor
    ]  # {layer name: [B, N]} (reduce=None: the full maps), in forward order
    pre: dict[str, torch.Tensor] | None = (
        None  # pre=True: each layer's ReLU input; layers without a ReLU absent
    )
    output: torch.Tensor | None = None  # output=True: the model's output, under the edits


class _Forward:
    """The state of one forward through the capture: each layer's module calls so far, what was captured."""

    def __init__(self, layers: list[UnitLayer], with_pre: bool):
        self.calls = dict.fromkeys((layer.name for layer in layers), 0)
        self.activations: dict[str, torch.Tensor] = {}
        self.pre: dict[str, torch.Tensor] | None = {} if with_pre else None
        self.relu_inputs: dict[str, torch.Tensor] = {}  # ReLU path -> its latest input, reduced


class LayerCapture:
    """Runs a model and captures the requested layers' unit activations, stopping after the deepest.

    >>> with LayerCapture(model, [layer_a, layer_b], reduce="mean") as capture:
    ...     for images in batches:
    ...         got = capture(images)  # Captured: got.activations == {"conv1_1": [B, 64], ...}

    The hooks are registered when the ``with`` block is entered and removed when it is left (also when a
    forward raises); inside the block they act only during the capture's own calls, so other forwards of
    the model run untouched. Called outside a ``with`` block the capture registers its hooks for that call
    alone: convenient for one forward, slower in a loop.

    - ``reduce``: "mean", "max" or "center" over space (`reduce_units`); None: the full maps, cloned.
    - ``pre=True``: ``got.pre`` holds, for each layer read after a ReLU, its pre-activation (the ReLU's input
      on its last call within the layer's module), reduced as the units or by ``pre_reduce``.
    - ``output=True``: ``got.output`` is the model's output; the forward then runs to the end.
    - ``edits`` ({layer name: function of the layer's output}): the edited output replaces the layer's
      output from then on (and is what is captured).
    - ``stop=False``: run the whole forward even when the output is not kept (to compare with a cut one).
    - ``readouts`` ({layer name: readout}): the layer is read through the readout (module doc): its K
      responses are what is captured (and its pre-activations with ``pre=True``); the edits act before it.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[UnitLayer],
        reduce: str | None = "mean",
        *,
        pre: bool = False,
        output: bool = False,
        edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        pre_reduce: str | None = None,
        stop: bool = True,
        readouts: dict | None = None,
    ):
        if reduce is not None and reduce not in REDUCTIONS:
            raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
        if not layers:
            raise ValueError("LayerCapture needs at least one layer")
        if reduce == "center" and any(layer.kind == "tokens" for layer in layers):
            raise UsageError(TOKENS_HAVE_NO_CENTER)
        if pre_reduce is not None and (reduce is None or pre_reduce not in REDUCTIONS):
            raise UsageError(
                f"unknown pre-activation reduction {pre_reduce!r}; valid: {', '.join(REDUCTIONS)}"
            )
        if pre_reduce is not None and not pre:
            raise ValueError("pre_reduce reduces pre-activations: it needs pre=True")
        self.model = model
        self.layers = list(layers)
        self.reduce = reduce
        self.pre = pre
        self.pre_reduce = pre_reduce or reduce  # by default the pre-activations are reduced as the units
        self.output = output
        self.stop = stop and not output  # the output needs the whole forward
        self.edits = dict(edits or {})
        unknown = sorted(set(self.edits) - {layer.name for layer in self.layers})
        if unknown:
            raise ValueError(f"edits of layer(s) {unknown} that are not captured")
        self.readouts = dict(readouts or {})
        unknown = sorted(set(self.readouts) - {layer.name for layer in self.layers})
        if unknown:
            raise ValueError(f"readouts of layer(s) {unknown} that are not captured")
        for layer in self.layers:
            if layer.name in self.readouts:
                check_readout(self.readouts[layer.name], layer.name, layer.n_units)
        # ReLUs whose whole input is kept: a readout encodes the full pre-ReLU map, reduced afterwards.
        self._full_relu_inputs = {
            layer.relu for layer in self.layers if layer.name in self.readouts and layer.relu is not None
        }
        self._modules = dict(model.named_modules())
        missing = [
            path
            for layer in self.layers
            for path in (layer.module, layer.relu)
            if path is not None and path not in self._modules
        ]
        if missing:
            raise ValueError(f"model has no module(s) {missing}")
        self._handles: list | None = None  # while registered (inside a `with` block or a call)
        self._forward: _Forward | None = None  # while one of this capture's forwards runs

    def __enter__(self) -> LayerCapture:
        if self._handles is not None:
            raise RuntimeError("this LayerCapture is already in a `with` block")
        self._handles = [
            self._modules[layer.module].register_forward_hook(self._layer_hook(layer))
            for layer in self.layers
        ]
        if self.pre:
            relus = {layer.relu: layer.kind for layer in self.layers if layer.relu is not None}
            self._handles += [
                self._modules[path].register_forward_pre_hook(self._relu_input_hook(path, kind))
                for path, kind in relus.items()
            ]
        return self

    def __exit__(self, *_exc) -> None:
        for handle in self._handles or []:
            handle.remove()
        self._handles = None

    def __call__(self, images: torch.Tensor) -> Captured:
        if self._forward is not None:
            raise RuntimeError("a LayerCapture cannot be called from within its own forward")
        if self._handles is None:
            with self:
                return self._run(images)
        return self._run(images)

    def _run(self, images: torch.Tensor) -> Captured:
        forward = self._forward = _Forward(self.layers, self.pre)
        output = None
        try:
            output = self.model(images)
        except _StopForward:
            pass
        finally:
            self._forward = None
        if len(forward.activations) != len(self.layers):
            raise RuntimeError(
                "the forward did not reach layer(s) "
                + ", ".join(
                    f"{layer.name} (module {layer.module} ran {forward.calls[layer.name]} time(s), its catalog "
                    f"expects {layer.calls})"
                    for layer in self.layers
                    if layer.name not in forward.activations
                )
            )
        return Captured(forward.activations, forward.pre, output if self.output else None)

    def _units(self, tensor: torch.Tensor, kind: str) -> torch.Tensor:
        return tensor.clone() if self.reduce is None else reduce_units(tensor, kind, self.reduce)

    def _layer_hook(self, layer: UnitLayer):
        """The forward hook of one layer: counts the module's calls and, at the last one, applies the edit and
        keeps the units (and the pre-activation the ReLU hook saw)."""
        edit = self.edits.get(layer.name)
        readout = self.readouts.get(layer.name)

        def hook(_module, _inputs, output):
            forward = self._forward
            if forward is None:
                return None  # a forward of the model that is not this capture's
            forward.calls[layer.name] += 1
            if forward.calls[layer.name] != layer.calls:
                return None  # not yet the module's last call in this forward
            if edit is not None:
                output = edit(output)
            if readout is not None:
                self._read_out(forward, layer, readout, output)
            else:
                forward.activations[layer.name] = self._units(output, layer.kind)
                if forward.pre is not None and layer.relu is not None:
                    forward.pre[layer.name] = forward.relu_inputs[layer.relu]
            if self.stop and len(forward.activations) == len(self.layers):
                raise _StopForward
            return output if edit is not None else None

        return hook

    def _read_out(self, forward: _Forward, layer: UnitLayer, readout, output: torch.Tensor) -> None:
        """The layer's K responses to `readout` (and their pre-activations), reduced as units are. A stacked
        readout's parts are reduced one by one: each part's numbers are then those of a capture through it
        alone (a reduction over the wider stacked tensor may sum in another order)."""
        parts = getattr(readout, "parts", None)
        if parts is None or self.reduce is None:
            return self._read_out_one(forward, layer, readout, output)
        pieces = []
        for part in parts:
            self._read_out_one(forward, layer, part, output)
            pieces.append(
                (
                    forward.activations.pop(layer.name),
                    forward.pre.pop(layer.name, None) if forward.pre is not None else None,
                )
            )
        forward.activations[layer.name] = torch.cat([response for response, _ in pieces], dim=-1)
        if forward.pre is not None and all(pre is not None for _, pre in pieces):
            full_conv = self.pre_reduce is None and layer.kind == "conv"  # [B, K, H, W] (restore_layout)
            forward.pre[layer.name] = torch.cat([pre for _, pre in pieces], dim=1 if full_conv else -1)

    def _read_out_one(self, forward: _Forward, layer: UnitLayer, readout, output: torch.Tensor) -> None:
        relu_input = forward.relu_inputs.get(layer.relu) if forward.pre is not None and layer.relu else None
        values = channels_last(output, layer.kind)
        values_pre = None if relu_input is None else channels_last(relu_input, layer.kind)
        kind = ENCODED_KIND[layer.kind]
        # An affine part reduced by the mean or the centre (no pre wanted) encodes the reduced values, once per
        # image: equal to reducing its responses per position (both commute with an affine map), at K/C of one
        # position's arithmetic.
        parts = getattr(readout, "parts", None) or [readout]
        shortcut = forward.pre is None and self.reduce in ("mean", "center")
        # The layer reduced once, only where a part reads it (an SAE alone reads every position).
        reduced = (
            reduce_units(output, layer.kind, self.reduce) if shortcut and any(map(is_affine, parts)) else None
        )
        # A stacked readout's parts are encoded and reduced one by one, then put side by side: each part's
        # responses are then those of the part read alone, bit for bit (one reduction over all K could order
        # its sums otherwise).
        responses, pres = [], []
        for part in parts:
            if shortcut and is_affine(part):
                responses.append(part.encode(reduced)[0])
                pres.append(None)
                continue
            response, pre = encode_with_pre(part, values, values_pre)
            if forward.pre is not None and getattr(part, "encoder", None) == "topk":
                pre = topk_margin(pre, part.top_k)  # what a silent topk direction climbs (basis.py)
            responses.append(self._reduced(response, layer.kind, kind, self.reduce))
            pres.append(None if pre is None else self._reduced(pre, layer.kind, kind, self.pre_reduce))
        forward.activations[layer.name] = _side_by_side(responses, layer.kind)
        if forward.pre is not None and all(pre is not None for pre in pres):
            forward.pre[layer.name] = _side_by_side(pres, layer.kind)

    @staticmethod
    def _reduced(values: torch.Tensor, layer_kind: str, kind: str, reduce: str | None) -> torch.Tensor:
        """Encoded values [B, ..., K] reduced as units are ([B, K]), or (`reduce` None) in the layer's layout."""
        return restore_layout(values, layer_kind) if reduce is None else reduce_units(values, kind, reduce)

    def _relu_input_hook(self, path: str, kind: str):
        # Reduced before the ReLU runs: an inplace ReLU overwrites its input. A spatial max keeps its input for
        # the backward, so it gets a copy the ReLU cannot overwrite.
        def hook(_module, inputs):
            forward = self._forward
            if forward is None:
                return
            if self.pre_reduce is None or path in self._full_relu_inputs:
                forward.relu_inputs[path] = inputs[0].clone()
                return
            pre = inputs[0].clone() if self.pre_reduce == "max" and inputs[0].requires_grad else inputs[0]
            forward.relu_inputs[path] = reduce_units(pre, kind, self.pre_reduce)

        return hook
