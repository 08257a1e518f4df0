"""The optimization loop: a batch of images, one per unit of one layer, optimized together.

One Adam optimizer over the batch's parameters (Adam is elementwise, so each image follows its
own trajectory), one vectorized objective, and a forward that stops at the target layer. The steps
may run in bf16 (`precision`); the image parameters, the transforms and the optimizer stay fp32.

After the last step each image is quantized to 8 bits, exactly as stored, and goes forward once
more, in fp32 and without transforms: that forward gives the recorded layer activations, RS, ties,
the objective and the unit's status. The start image is evaluated the same way before the first
step, so every row says how far its optimization got.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from repsub.capture.precision import (
    Precision,
    as_input,
    exact_fp32,
    prepare_for_speed,
    resolve_precision,
)
from repsub.capture.reader import REDUCTIONS, LayerCapture
from repsub.core.readout import check_readout, is_units
from repsub.core.rs import representative_substitution, rs_ties
from repsub.errors import UsageError
from repsub.models import LoadedModel, UnitLayer
from repsub.optimize.objectives import METHODS, activation, climbed, pre_reduction
from repsub.optimize.own_direction import OwnDirection
from repsub.optimize.own_unit import OwnUnit
from repsub.optimize.param import PARAMETERIZATIONS
from repsub.optimize.progress import UnitProgress
from repsub.optimize.settings import OptimSettings  # declared there, light: the CLI reads it
from repsub.optimize.transforms import RandomAffine

RESCUE_LR_FACTOR = 3.0  # the rescue rounds' Adam step size, a multiple of the run's lr (docs/science.md, 5c)


@dataclass
class OptimResult:
    """Per-unit results of one layer and method, in the order of `units`."""

    indices: np.ndarray  # int64 [B]: the units, in the layer
    seeds: np.ndarray  # int64 [B]
    images: np.ndarray  # uint8 [B, H, W, 3]
    layer_activations: np.ndarray  # float32 [B, N]
    activation: np.ndarray  # float32 [B], the unit's own activation on its image
    rs: np.ndarray  # float64 [B] (NaN where the activations are not finite)
    rs_ties: np.ndarray  # float64 [B]
    status: np.ndarray  # str [B]: ok | no_response | nonfinite (repsub.store.UNIT_STATUSES)
    objective_start: np.ndarray  # float32 [B], the method's objective on the start image
    objective_final: np.ndarray  # float32 [B], ... on the stored 8-bit image
    steps: np.ndarray  # int64 [B]: the steps its image took (settings.steps; a multiple of it where rescued)


def unit_seed(run_seed: int, layer: str, unit: int) -> int:
    """A unit's seed, derived from (run seed, layer, unit) alone: independent of batch and shard."""
    digest = hashlib.sha256(f"repsub/{run_seed}/{layer}/{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def target_seed(run_seed: int, layer: str, basis: str, index: int) -> int:
    """A target's seed: a unit's `unit_seed`; a basis direction's from (run seed, layer, basis, direction)."""
    if basis == "unit":
        return unit_seed(run_seed, layer, index)
    digest = hashlib.sha256(f"repsub/{run_seed}/{layer}/{basis}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def unit_status(layer_activations: torch.Tensor, own: torch.Tensor) -> list[str]:
    """ok, no_response (own activation <= 0) or nonfinite (any activation of the layer not finite)."""
    finite = torch.isfinite(layer_activations).all(dim=1).tolist()
    return [
        "nonfinite" if not f else ("ok" if a > 0 else "no_response")
        for f, a in zip(finite, own.tolist(), strict=True)
    ]


def _normalizer(model: LoadedModel, device: torch.device):
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    return lambda images: (images - mean) / std


class _Climber:
    """Steps of Adam on a batch of images, each climbing its own target's objective (the method's), in the
    run's precision: the steps of `_optimize_batch`, and again of its rescue, on a subset of the batch."""

    def __init__(self, model, layer, method, settings, precision, reduce, device, readout):
        self.model, self.layer, self.method, self.settings = model, layer, method, settings
        self.precision, self.reduce, self.device, self.readout = precision, reduce, device, readout
        self.pre_reduce = pre_reduction(settings.own_term, reduce)
        self.channels_last = prepare_for_speed(model.module, device)
        self.normalize = _normalizer(model, device)

    def climb(self, image, warp, targets: torch.Tensor, steps: int, progress: UnitProgress, lr: float):
        """`steps` steps of a fresh Adam at `lr` on image's parameters ([B] images, target targets[b] each), each
        step's images warped by `warp(images, step)`."""
        settings, layer, readout, method = self.settings, self.layer, self.readout, self.method
        count = len(targets)
        optimizer = torch.optim.Adam(image.parameters(), lr=lr)
        # AM's shortcuts: each image's own unit (OwnUnit), or its own direction (OwnDirection), alone.
        own_unit = (
            OwnUnit.find(self.model.module, layer, count) if method == "am" and readout is None else None
        )
        own_direction = method == "am" and readout is not None and OwnDirection.applies(readout)
        own_index = torch.zeros_like(targets)  # each image's own target is target 0 of the one-target read
        # "post": no pre-activation, exactly the plain objective's forward
        with_pre = settings.own_term != "post"
        readouts = None if readout is None else {layer.name: readout}
        step_readouts = (
            {layer.name: OwnDirection(readout, targets, margin_everywhere=settings.own_term == "pre")}
            if own_direction
            else readouts
        )
        step_capture = LayerCapture(
            self.model.module, [layer], reduce=self.reduce, pre=with_pre,
            pre_reduce=self.pre_reduce if with_pre else None, readouts=step_readouts,
        )  # fmt: skip

        def objective_of(warped: torch.Tensor) -> torch.Tensor:
            """The objective the optimizer climbs, per image: [B]."""
            index = targets
            with self.precision.autocast(self.device):
                if own_unit is not None:  # [B, 1] each
                    post, pre = own_unit.read(warped, targets, self.reduce, self.pre_reduce)
                    index = own_index
                else:
                    got = step_capture(warped)
                    post, pre = got.activations[layer.name], (got.pre or {}).get(layer.name)
                    index = own_index if own_direction else targets
            return climbed(method, post, pre, index, settings.own_term)

        with step_capture:  # the hooks stay registered across the steps
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                objective = objective_of(as_input(self.normalize(warp(image(), step)), self.channels_last))
                (-objective.sum()).backward()
                optimizer.step()
                progress.step(count)


def _unwarped(images: torch.Tensor, step: int) -> torch.Tensor:
    """The rescue's warp: none."""
    return images


def _image_subset(image: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A copy of a batch's image parameterization holding images `keep` only (every parameter's first axis is
    the image's)."""
    subset = copy.deepcopy(image)
    for name, parameter in image.named_parameters():
        setattr(subset, name, torch.nn.Parameter(parameter.detach()[keep].clone()))
    return subset


def _optimize_batch(
    model: LoadedModel,
    layer: UnitLayer,
    units: list[int],
    seeds: list[int],
    method: str,
    settings: OptimSettings,
    precision: Precision,
    reduce: str,
    device: torch.device,
    progress: UnitProgress,
    readout=None,
) -> OptimResult:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    image = PARAMETERIZATIONS[settings.param](generators, settings.image_size, device)
    readouts = None if readout is None else {layer.name: readout}
    recording = LayerCapture(model.module, [layer], reduce=reduce, readouts=readouts)
    climber = _Climber(model, layer, method, settings, precision, reduce, device, readout)
    unit_index = torch.tensor(units, device=device)
    recorded = METHODS[method]

    def evaluate(images: torch.Tensor) -> torch.Tensor:
        """The recorded layer activations of images: exact fp32 (no TF32, fixed cuDNN algorithms), no
        transforms."""
        with torch.no_grad(), exact_fp32():
            return (
                recording(as_input(climber.normalize(images), climber.channels_last))
                .activations[layer.name]
                .to(torch.float32)
            )

    def finish(image) -> tuple[torch.Tensor, torch.Tensor]:
        """The 8-bit images, as stored, and the recorded activations on them."""
        with torch.no_grad():
            quantized = (image().nan_to_num(0.5) * 255).round().to(torch.uint8)
            return quantized, evaluate(quantized.to(torch.float32) / 255)

    with torch.no_grad():
        objective_start = recorded(evaluate(image()), unit_index)
    warp = RandomAffine(generators, settings.steps, settings.jitter, settings.scale, settings.rotate, device)
    climber.climb(image, warp, unit_index, settings.steps, progress, settings.lr)
    quantized, final = finish(image)
    status = unit_status(final, activation(final, unit_index))
    steps_taken = np.full(len(units), settings.steps, dtype=np.int64)
    # The rescue: a target still silent goes on from its own image for up to `rescue_rounds` more rounds of
    # `steps` steps, until it responds (docs/science.md: rare directions need more steps than units). Each round
    # climbs a fresh Adam on the still-silent images alone, so a target's result depends on its seed alone, never on
    # which others were rescued with it; it climbs without the random transforms, the objective as it is recorded,
    # at RESCUE_LR_FACTOR x lr (with the transforms a crowded TopK direction's margin stalls below 0: section 5c).
    silent = [i for i, s in enumerate(status) if s == "no_response"]
    for round_ in range(1, settings.rescue_rounds + 1):
        if not silent:
            break
        progress.add_steps(len(silent) * settings.steps)
        subset = _image_subset(image, silent)
        climber.climb(
            subset, _unwarped, unit_index[silent], settings.steps, progress, settings.lr * RESCUE_LR_FACTOR
        )
        with torch.no_grad():
            for (_, whole), (_, part) in zip(
                image.named_parameters(), subset.named_parameters(), strict=True
            ):
                whole[silent] = part
        quantized[silent], final[silent] = finish(subset)
        steps_taken[silent] = settings.steps * (1 + round_)
        rescued = unit_status(final[silent], activation(final[silent], unit_index[silent]))
        for i, s in zip(silent, rescued, strict=True):
            status[i] = s
        silent = [i for i in silent if status[i] == "no_response"]
    own = activation(final, unit_index)
    rs = representative_substitution(final, unit_index)
    rs[torch.tensor([s == "nonfinite" for s in status])] = float("nan")
    return OptimResult(
        indices=np.asarray(units, dtype=np.int64), seeds=np.asarray(seeds, dtype=np.int64),
        images=quantized.permute(0, 2, 3, 1).cpu().numpy(), layer_activations=final.cpu().numpy(),
        activation=own.cpu().numpy(), rs=rs.cpu().numpy(), rs_ties=rs_ties(final, unit_index).cpu().numpy(),
        status=np.asarray(status), objective_start=objective_start.cpu().numpy().astype(np.float32),
        objective_final=recorded(final, unit_index).cpu().numpy().astype(np.float32), steps=steps_taken,
    )  # fmt: skip


def optimize_units(
    model: LoadedModel,
    layer: UnitLayer,
    units: list[int],
    method: str,
    settings: OptimSettings,
    run_seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | UnitProgress = True,
    reduce: str = "mean",
    readout=None,
    seeds: list[int] | None = None,
) -> OptimResult:
    """Optimize one image per unit of `layer` for `method` ("am" or "iam"), in batches of settings.batch_size.

    Returns images (uint8 RGB), the layer's activation vector on each final image, RS, ties, the
    objective before and after and each unit's status (a unit the optimization could not drive is
    `no_response`, never silently an ordinary row). `reduce` is the spatial reduction of conv units,
    which must be the one of the run's selectivity. `progress`: a bar of the caller's (a UnitProgress
    spanning several layers) or whether to show one for this call.

    `readout` (repsub.core.readout; None: the units) makes the targets the directions of a basis of `layer`:
    `units` are then direction indices, the objectives and RS read the K responses (IAM subtracts the mean of
    the basis's other directions; RS counts the directions that respond more), and the hybrid own term climbs
    the direction's pre-activation while its response is 0. `seeds` replaces the targets' derived seeds
    (`target_seed`).
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if reduce not in REDUCTIONS:
        raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
    settings.validate()
    if is_units(readout):
        readout = None  # the unit basis takes the units' own path (the AM shortcut included)
    else:
        check_readout(readout, layer.name, layer.n_units)
    count = layer.n_units if readout is None else readout.K
    bad_units = [u for u in units if not 0 <= u < count]
    if bad_units:
        what = "units" if readout is None else f"basis {readout.name} has directions"
        raise UsageError(f"layer {layer.name} {what} 0-{count - 1}; out of range: {bad_units[:10]}")
    device = torch.device(device)
    model.module.to(device)
    precision = resolve_precision(settings.precision, device)
    basis = "unit" if readout is None else readout.name
    if seeds is None:
        seeds = [target_seed(run_seed, layer.name, basis, u) for u in units]
    elif len(seeds) != len(units):
        raise ValueError(f"{len(seeds)} seeds for {len(units)} targets")
    own_bar = not isinstance(progress, UnitProgress)
    bar = UnitProgress(len(units), settings.steps, enabled=bool(progress)) if own_bar else progress
    parts = []
    try:
        bar.describe(f"{method} {layer.name}")
        for start in range(0, len(units), settings.batch_size):
            batch = slice(start, start + settings.batch_size)
            parts.append(_optimize_batch(
                model, layer, units[batch], seeds[batch], method, settings, precision, reduce, device, bar,
                readout,
            ))  # fmt: skip
            bar.units_done(len(units[batch]))
    finally:
        if own_bar:
            bar.close()
    return OptimResult(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in OptimResult.__dataclass_fields__)
    )
