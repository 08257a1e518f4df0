"""Activation vectors for fitting a basis: a layer's vector at sampled positions of each image.

A layer's output at one position is a vector of C values: a conv layer's channels at (h, w), a linear layer's N
neurons (one position per image), a token's D features. For each image, a generator seeded from (seed, the
image's index in the data) decides, first, whether the image is held out (for the basis's metrics) or used for
the fit, then which of its positions are kept (up to `positions`, without replacement). The rule depends on the
image alone, never on its batch or shard, so shards of the data sample exactly what one pass samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from repsub.capture.reader import LayerCapture
from repsub.models import LoadedModel, UnitLayer

HELD_OUT_SHARE = 0.2  # of the images, for the metrics


def position_vectors(output: torch.Tensor, kind: str) -> torch.Tensor:
    """A layer's full output as [B, positions, C] (repsub.models.KINDS), in float32 at least."""
    if output.dtype in (torch.bfloat16, torch.float16):
        output = output.float()
    if kind == "conv":  # [B, C, H, W]
        return output.flatten(2).transpose(1, 2)
    if kind == "nhwc":  # [B, H, W, C]
        return output.flatten(1, 2)
    if kind == "tokens":  # [B, T, D]
        return output
    if kind == "linear":  # [B, N]: one position
        return output.flatten(1)[:, None, :]
    raise ValueError(f"unknown layer kind {kind!r}")


def image_draw(seed: int, image_index: int, n_positions: int, positions: int, held_out_share: float):
    """(held out?, the positions kept) of one image: its own generator, seeded from (seed, image index)."""
    rng = np.random.default_rng([seed, image_index])
    held_out = bool(rng.random() < held_out_share)
    kept = np.sort(rng.choice(n_positions, size=min(positions, n_positions), replace=False))
    return held_out, kept


@dataclass
class Sample:
    """One layer's sampled vectors: the fit set and the held-out set, [N, C] float32, in image order."""

    fit: torch.Tensor
    held_out: torch.Tensor
    n_images: int
    n_positions: int  # positions per image in the layer (H x W, T, or 1)


@torch.no_grad()
def sample_vectors(
    model: LoadedModel,
    layers: list[UnitLayer],
    batches: Iterable,
    indices: Sequence[int],
    positions: int,
    seed: int,
    device: str | torch.device = "cpu",
    held_out_share: float = HELD_OUT_SHARE,
) -> dict[str, Sample]:
    """Stream `batches` of (images, labels), the images of `indices` (their indices in the data) in that order,
    and keep each layer's vectors at the positions `image_draw` picks. The forward stops after the deepest
    layer; the full maps come from `LayerCapture(reduce=None)`."""
    parts = {layer.name: ([], []) for layer in layers}  # layer -> (fit parts, held-out parts)
    spatial = dict.fromkeys(parts, 0)
    indices = list(indices)
    seen = 0
    with LayerCapture(model.module.to(device), layers, reduce=None) as capture:
        for images, _labels in batches:
            maps = capture(images.to(device)).activations
            batch_indices = indices[seen : seen + len(images)]
            seen += len(images)
            for layer in layers:
                vectors = position_vectors(maps[layer.name], layer.kind).float().cpu()
                spatial[layer.name] = vectors.shape[1]
                for row, index in enumerate(batch_indices):
                    held_out, kept = image_draw(seed, index, vectors.shape[1], positions, held_out_share)
                    parts[layer.name][held_out].append(vectors[row, torch.from_numpy(kept)])
    if seen != len(indices):
        raise ValueError(f"the batches held {seen} images, {len(indices)} indices were given")
    return {
        name: Sample(
            _stack(fit, _n_channels(layers, name)),
            _stack(held, _n_channels(layers, name)),
            seen,
            spatial[name],
        )
        for name, (fit, held) in parts.items()
    }


def _n_channels(layers: list[UnitLayer], name: str) -> int:
    return next(layer.n_units for layer in layers if layer.name == name)


def _stack(parts: list[torch.Tensor], n_channels: int) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, n_channels)
