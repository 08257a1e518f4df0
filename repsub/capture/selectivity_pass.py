"""The selectivity pass: stream a dataset through the model once, accumulating per-class sums for every layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from repsub.capture.precision import Precision, as_input, autocast_ready, prepare_for_speed
from repsub.capture.reader import LayerCapture
from repsub.core.selectivity import ClassMeanAccumulator
from repsub.models import LoadedModel, UnitLayer

FP32 = Precision("fp32", "fp32", "default")


@torch.no_grad()
def accumulate_class_sums(
    model: LoadedModel,
    layers: list[UnitLayer],
    batches: Iterable,
    num_classes: int,
    reduce: str = "mean",
    device: str | torch.device = "cpu",
    total: int | None = None,
    progress: bool = True,
    on_batch: Callable[[dict[str, torch.Tensor], torch.Tensor], None] | None = None,
    precision: Precision | None = None,
    readouts: dict | None = None,
    desc: str = "selectivity pass",
) -> ClassMeanAccumulator:
    """One pass over `batches` of (images, labels); returns the per-class sums of all `layers` at once.

    The forward stops after the deepest requested layer and runs in `precision` (default fp32); unit
    activations are reduced in float32 and summed in float64 whatever the precision. `total` (image
    count) sizes the progress bar. `on_batch(activations, labels)` sees each batch's unit activations
    {layer: [B, N]} (e.g. to store them per image: repsub.runstore.activations.ActivationWriter.add).
    `readouts` ({layer name: readout}, repsub.core.readout) reads those layers through a basis: their K
    responses are summed instead of the units (a StackedReadout serves units and several bases of one layer
    in the same pass: split its class means by its `slices`). `desc` names the progress bar.
    """
    readouts = readouts or {}
    precision = precision or FP32
    channels_last = prepare_for_speed(model.module, device)
    capture = LayerCapture(autocast_ready(model.module, precision), layers, reduce=reduce, readouts=readouts)
    widths = {
        layer.name: readouts[layer.name].K if layer.name in readouts else layer.n_units for layer in layers
    }
    accumulator = ClassMeanAccumulator(widths, num_classes, device)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    with bar, capture:  # one registration of the hooks for the whole pass
        for images, labels in batches:
            images = as_input(images.to(device, non_blocking=True), channels_last)
            with precision.autocast(device):
                activations = capture(images).activations
            accumulator.add(activations, labels)
            if on_batch is not None:
                on_batch(activations, labels)
            bar.update(len(labels))
    return accumulator
