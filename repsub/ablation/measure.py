"""Importance by ablation, batched and cut: per image batch the network's head runs once, its tail once per
ablated unit (many units at a time), instead of one full forward per unit.

`measure_importance` streams labelled batches, splits the model at the layer (repsub.ablation.split),
and for each batch computes the intact logits and, for blocks of units, the logits with each unit
ablated, into exact mergeable counts (repsub.ablation.counts). A model that cannot be traced falls
back to full forwards with the ablation applied by a hook (same results, slower), and says so.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from repsub.ablation.counts import AblationCounts
from repsub.ablation.edit import ABLATIONS, ablate, ablate_direction, ablated_copies, ablated_direction_copies
from repsub.ablation.split import SplitModel
from repsub.capture.reader import LayerCapture
from repsub.core.readout import check_readout, is_units
from repsub.errors import UsageError
from repsub.models import LoadedModel, UnitLayer

# Elements of the stacked ablated copies fed to the tail at once (float32: 128 MiB); bounds memory.
CHUNK_ELEMENTS = 2**25


def _direction_readout(readout, layer: UnitLayer):
    """`readout`, checked against the layer; None for the unit basis (the units' own path)."""
    if is_units(readout):
        return None
    check_readout(readout, layer.name, layer.n_units)
    return readout


@torch.no_grad()
def unit_means(model: LoadedModel, layer: UnitLayer, batches: Iterable, device, readout=None) -> torch.Tensor:
    """Each unit's mean activation over the images (a conv map's mean over images and positions): [N]; with
    a `readout`, each direction's mean response: [K]."""
    readout = _direction_readout(readout, layer)
    readouts = None if readout is None else {layer.name: readout}
    total = torch.zeros(layer.n_units if readout is None else readout.K, dtype=torch.float64)
    count = 0
    with LayerCapture(model.module, [layer], reduce="mean", readouts=readouts) as capture:
        for images, _ in batches:
            total += capture(images.to(device)).activations[layer.name].double().sum(0).cpu()
            count += len(images)
    if count == 0:
        raise UsageError("no images to compute the units' means from")
    return (total / count).float()


def ablated_forward(
    model: LoadedModel, layer: UnitLayer, unit: int, value: float, images, readout=None
) -> torch.Tensor:
    """The model's output with `unit` of `layer` (direction `unit` of `readout`) set to `value`: one full
    forward, the edit made by the capture's hook at the layer's read point (its last call). The reference the
    cut computation equals."""
    readout = _direction_readout(readout, layer)
    if readout is None:
        edit = {layer.name: lambda output: ablate(output, unit, value, layer.kind)}
    else:
        edit = {layer.name: lambda output: ablate_direction(output, readout, unit, value, layer.kind)}
    return LayerCapture(model.module, [layer], output=True, edits=edit)(images).output


_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {layer module: SplitModel}


def _split(module: torch.nn.Module, path: str) -> SplitModel:
    """A model's split at a module, traced once per model and layer (tracing VGG16 takes about a second;
    a sweep worker measures many shards of the same layer)."""
    splits = _SPLITS.setdefault(module, {})
    if path not in splits:
        splits[path] = SplitModel(module, path)
    return splits[path]


class _TailRunner:
    """Runs the tail of the network on ablated copies of the layer's output."""

    def __init__(self, model: LoadedModel, layer: UnitLayer, readout=None):
        self.model, self.layer, self.readout = model, layer, readout
        try:
            self.split = _split(model.module, layer.module)
        except UsageError:
            raise
        except Exception as err:  # torch.fx cannot trace some models (data-dependent control flow)
            print(
                f"note: {model.name} cannot be cut at {layer.name} ({type(err).__name__}); importance runs a full "
                "forward per ablated unit instead (same results, slower)",
                file=sys.stderr,
            )
            self.split = None

    def baseline_and_head(self, images: torch.Tensor):
        """(intact logits [B, C], what the tail needs)."""
        if self.split is None:
            return self.model.module(images), images
        crossing = self.split.prefix(images)
        logits = self.split.suffix(*(t.clone() for t in crossing))  # the tail may work in place
        return logits, crossing

    def ablated(self, head, units: list[int], values: torch.Tensor) -> torch.Tensor:
        """Logits [K, B, C] with units[k] ablated in copy k."""
        if self.split is None:
            return torch.stack(
                [self._hooked_forward(head, u, v) for u, v in zip(units, values.tolist(), strict=True)]
            )
        index = self.split.crossing_index
        batch = head[index].shape[0]
        inputs = [
            self._copies(t, units, values) if i == index
            else t.repeat(len(units), *([1] * (t.dim() - 1)))
            for i, t in enumerate(head)
        ]  # fmt: skip
        return self.split.suffix(*inputs).reshape(len(units), batch, -1)

    def _copies(self, output: torch.Tensor, units: list[int], values: torch.Tensor) -> torch.Tensor:
        if self.readout is None:
            return ablated_copies(output, units, values, self.layer.kind)
        return ablated_direction_copies(output, self.readout, units, values, self.layer.kind)

    def _hooked_forward(self, images, unit: int, value: float) -> torch.Tensor:
        return ablated_forward(self.model, self.layer, unit, value, images, self.readout)

    def units_per_chunk(self, head) -> int:
        if self.split is None:
            return 1
        size = sum(t.numel() for t in head)
        if self.readout is not None:  # each copy also holds its K responses
            size = size * max(1, -(-self.readout.K // self.readout.C))
        return max(1, CHUNK_ELEMENTS // max(size, 1))


@torch.no_grad()
def measure_importance(
    model: LoadedModel,
    layer: UnitLayer,
    units: list[int],
    batches: Iterable,
    num_classes: int,
    ablation: str = "zero",
    means: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    total: int | None = None,
    progress: bool = True,
    readout=None,
) -> AblationCounts:
    """Ablate each of `units` of `layer` on every image of `batches` ((images, labels) pairs); returns the
    exact counts. `ablation`: "zero", or "mean" with `means` (from `unit_means`, [N]). With a `readout`
    (repsub.core.readout; None: the units), `units` are directions of that basis, ablated as
    repsub.ablation.edit says (`means` then from `unit_means(..., readout=readout)`, [K])."""
    readout = _direction_readout(readout, layer)
    if ablation not in ABLATIONS:
        raise UsageError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
    if ablation == "mean" and means is None:
        raise ValueError("mean ablation needs the units' means")
    values = torch.zeros(len(units)) if ablation == "zero" else means[torch.as_tensor(units)]
    tail = _TailRunner(model, layer, readout)
    counts = AblationCounts(units, num_classes)
    with tqdm(total=total, desc=f"importance {layer.name}", unit="img", disable=not progress) as bar:
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device, torch.int64)
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                raise UsageError(f"labels outside the model's {num_classes} classes")
            logits, head = tail.baseline_and_head(images)
            counts.add_baseline(logits, labels)
            step = tail.units_per_chunk(head)
            for first in range(0, len(units), step):
                block = units[first : first + step]
                counts.add_ablated(
                    first, tail.ablated(head, block, values[first : first + step].to(device)), labels
                )
            bar.update(len(labels))
    return counts
