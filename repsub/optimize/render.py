"""The optimization loop: a batch of images, one per unit of one layer, optimized together.

One Adam optimizer over the batch's parameters (Adam is elementwise, so each image follows its
own trajectory), one vectorized objective, and a forward that stops at the target layer. After
the last step each image is quantized to 8 bits, exactly as stored, and goes forward once more
without transforms: that forward gives the recorded layer activations and RS.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture import LayerReader
from ..errors import RepsubError, UsageError
from ..models import LoadedModel, UnitLayer
from ..rs import representative_substitution
from .objectives import METHODS
from .param import PARAMETERIZATIONS
from .transforms import RandomAffine


@dataclass(frozen=True)
class OptimSettings:
    """How images are optimized. Defaults follow common feature-visualization practice (Lucid)."""

    steps: int = 256
    lr: float = 0.05  # Adam learning rate
    image_size: int = 224
    param: str = "fourier"  # "fourier" (decorrelated colour) or "pixel"
    jitter: float = 0.03  # max shift, fraction of the image side
    scale: float = 0.05  # zoom factor drawn in [1 - scale, 1 + scale]
    rotate: float = 5.0  # max rotation, degrees
    batch_size: int = 64  # units optimized together

    def validate(self) -> None:
        if self.param not in PARAMETERIZATIONS:
            raise UsageError(
                f"unknown parameterization {self.param!r}; valid: {', '.join(PARAMETERIZATIONS)}"
            )
        for name in ("steps", "image_size", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


class OptimizationError(RepsubError):
    """The optimization produced non-finite values for some units."""


@dataclass
class OptimResult:
    """Per-unit results of one layer and method, in the order of `units`."""

    units: np.ndarray  # int64 [B]
    seeds: np.ndarray  # int64 [B]
    images: np.ndarray  # uint8 [B, H, W, 3]
    layer_activations: np.ndarray  # float32 [B, N]
    activation: np.ndarray  # float32 [B], the unit's own activation on its image
    rs: np.ndarray  # float64 [B]


def unit_seed(run_seed: int, layer: str, unit: int) -> int:
    """A unit's seed, derived from (run seed, layer, unit) alone: independent of batch and shard."""
    digest = hashlib.sha256(f"repsub/{run_seed}/{layer}/{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _normalizer(model: LoadedModel, device: torch.device):
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    return lambda images: (images - mean) / std


def _optimize_batch(
    model: LoadedModel,
    layer: UnitLayer,
    units: list[int],
    seeds: list[int],
    method: str,
    settings: OptimSettings,
    device: torch.device,
    bar: tqdm | None,
) -> OptimResult:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    image = PARAMETERIZATIONS[settings.param](generators, settings.image_size, device)
    warp = RandomAffine(generators, settings.steps, settings.jitter, settings.scale, settings.rotate, device)
    reader = LayerReader(model.module, [layer], reduce="mean")
    normalize = _normalizer(model, device)
    objective = METHODS[method]
    unit_index = torch.tensor(units, device=device)
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    for step in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        acts = reader(normalize(warp(image(), step)))[layer.name]
        (-objective(acts, unit_index).sum()).backward()
        optimizer.step()
        if bar is not None:
            bar.update(len(units))
    with torch.no_grad():
        quantized = (image() * 255).round().to(torch.uint8)
        final = reader(normalize(quantized.to(torch.float32) / 255))[layer.name].to(torch.float32)
    bad = [u for u, ok in zip(units, torch.isfinite(final).all(dim=1).tolist(), strict=True) if not ok]
    if bad:
        raise OptimizationError(f"{method} on layer {layer.name}: non-finite activations for unit(s) {bad}")
    own = final.gather(1, unit_index.view(-1, 1)).squeeze(1)
    return OptimResult(
        units=np.asarray(units, dtype=np.int64), seeds=np.asarray(seeds, dtype=np.int64),
        images=quantized.permute(0, 2, 3, 1).cpu().numpy(), layer_activations=final.cpu().numpy(),
        activation=own.cpu().numpy(), rs=representative_substitution(final, unit_index).cpu().numpy(),
    )  # fmt: skip


def optimize_units(
    model: LoadedModel,
    layer: UnitLayer,
    units: list[int],
    method: str,
    settings: OptimSettings,
    run_seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> OptimResult:
    """Optimize one image per unit of `layer` for `method` ("am" or "iam"), in batches of settings.batch_size.

    Returns images (uint8 RGB), the layer's activation vector on each final image, and RS.
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    settings.validate()
    bad_units = [u for u in units if not 0 <= u < layer.units]
    if bad_units:
        raise UsageError(f"layer {layer.name} has units 0-{layer.units - 1}; out of range: {bad_units[:10]}")
    device = torch.device(device)
    model.module.to(device)
    seeds = [unit_seed(run_seed, layer.name, u) for u in units]
    parts = []
    # Counted in unit-steps, shown in units (unit_scale), so the bar moves at every step.
    with tqdm(
        total=len(units) * settings.steps,
        unit_scale=1 / settings.steps,
        desc=f"{method} {layer.name}",
        unit="unit",
        disable=not progress,
    ) as bar:
        for start in range(0, len(units), settings.batch_size):
            batch = slice(start, start + settings.batch_size)
            parts.append(
                _optimize_batch(
                    model,
                    layer,
                    units[batch],
                    seeds[batch],
                    method,
                    settings,
                    device,
                    bar if progress else None,
                )
            )
    return OptimResult(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in OptimResult.__dataclass_fields__)
    )
