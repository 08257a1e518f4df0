"""`repsub importance` / `repsub.importance(...)`: unit importance by ablation over a labelled dataset, into a run.

For each unit of the requested layers: the network's accuracy on a seeded, class-balanced subset of the
images with the unit ablated, against the intact network's (Morcos et al. 2018), and the mean loss
increase. Rows go to RUN/importance/ (repsub.runstore.tables.IMPORTANCE); re-runs replace their own rows.
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import torch

from repsub.ablation.edit import ABLATIONS
from repsub.ablation.measure import measure_importance, unit_means
from repsub.commands.context import CommandContext, check_common
from repsub.commands.targets import basis_layer, basis_record, resolve_basis
from repsub.data.sources import open_source
from repsub.data.subset import balanced_subset
from repsub.errors import DataError, UsageError
from repsub.models import LoadedModel
from repsub.runstore.provenance import Scope, basis_layer_meanings, importance_meaning
from repsub.runstore.tables import importance_table, with_basis, with_layer
from repsub.selection import parse_units, ranges_text


def command_key(ablation: str) -> str:
    """The manifest command of an ablation's importance rows (their `command` column)."""
    return f"importance/{ablation}"


def importance(
    model: str | LoadedModel | torch.nn.Module | None = None,
    weights: str | None = None,
    data: str | os.PathLike = "",
    out: str | os.PathLike | None = None,
    layers: list[str] | None = None,
    units: str | list[int] | None = None,
    images: int | None = None,
    ablation: str = "zero",
    image_size: int | None = None,
    batch_size: int = 64,
    seed: int | None = None,
    device: str | None = None,
    workers: int = 2,
    progress: bool = True,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    allow_mixed: bool = False,
    force_unlock: bool = False,
    basis=None,
) -> pa.Table:
    """Importance of every unit of `layers` (default: all) by ablation over `data` (a labelled ImageFolder
    or .beton whose classes are the model's): `images` (default all) is a seeded, class-balanced subset.
    `ablation`: "zero" (the unit's whole output set to 0) or "mean" (to its mean over those images).
    Returns the importance table (with its `layer` column) and writes it into the run `out` if given.
    Into an existing run, what is not given is the run's, as for selectivity and visualize (repsub.commands.extend):
    its model (re-created, weights verified by hash), seed, layers and image size (its selectivity's).
    `basis` (a readout object, repsub.core.readout, or a basis name of the run; None or "unit": the units)
    ablates the basis's directions at its layer instead (repsub.ablation.edit: the direction's response set
    to 0 or its mean at every position, what the basis does not reconstruct kept).
    Writing into `out` holds its lock and refuses importance from other data, image count or image size beside
    the run's unless `allow_mixed`; `force_unlock` removes a lock whose holder is gone."""
    if ablation not in ABLATIONS:
        raise UsageError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
    check_common(image_size=image_size, batch_size=batch_size, workers=workers, seed=seed, images=images)
    ctx = CommandContext.open("importance", out=out, model=model, weights=weights, seed=seed, device=device,
                              layers=layers, image_size=image_size, mean=mean, std=std)  # fmt: skip
    loaded, device, seed = ctx.model, ctx.device, ctx.seed
    size = ctx.image_size(image_size, batch=batch_size)
    ctx.record.say()
    source = open_source(data, size, loaded.mean, loaded.std, loaded.resize_ratio)
    if len(source.classes) != loaded.num_classes:
        raise DataError(
            f"--data {data}: {len(source.classes)} classes, the model's classifier {loaded.num_classes}: "
            "importance measures the model's accuracy, so the data's classes must be the model's, in its order"
        )
    subset = balanced_subset(source.labels(), images, seed)
    if images is not None and len(subset) < images:
        print(f"note: {data} holds {len(subset)} images, fewer than --images {images}", file=sys.stderr)
    readout = resolve_basis(basis, out, [layer.name for layer in ctx.layers])
    chosen = ctx.layers if readout is None else basis_layer(readout, ctx.layers, layers)
    counts = {layer.name: layer.n_units if readout is None else readout.K for layer in chosen}
    unit_lists = {layer.name: parse_units(units, counts[layer.name], layer.name) for layer in chosen}
    config = {
        "data": source.describe(),
        "image_size": size,
        "layers": list(unit_lists),
        "units": units if isinstance(units, str | None) else list(units),
        "images": images,
        "images_used": len(subset),
        "ablation": ablation,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(device),
    }
    if readout is not None:
        config["basis"] = basis_record(readout)

    def batches():
        return source.batches(batch_size, indices=subset, workers=workers, device=device)

    tables, baseline = {}, None
    scope = Scope("importance", ablation, {name: ranges_text(u) for name, u in unit_lists.items()},
                  importance_meaning(source, size, len(subset)),
                  basis="unit" if readout is None else readout.name,
                  layer_meanings=basis_layer_meanings(dict.fromkeys(unit_lists, readout)))  # fmt: skip
    with ctx.writing(
        command_key(ablation), config, [scope], allow_mixed=allow_mixed, force_unlock=force_unlock
    ) as output:
        for layer in chosen:
            means = unit_means(loaded, layer, batches(), device, readout) if ablation == "mean" else None
            measured = measure_importance(
                loaded, layer, unit_lists[layer.name], batches(), loaded.num_classes, ablation, means,
                device=device, total=len(subset), progress=progress, readout=readout,
            )  # fmt: skip
            results = measured.results()
            baseline = float(results["baseline_accuracy"][0])
            tables[layer.name] = with_basis(
                importance_table(results, ablation, command_key(ablation)), readout
            )
            output.write("importance", layer.name, tables[layer.name])  # each layer lands when done
        print(f"importance: baseline accuracy {baseline:.4f} on {len(subset)} images", file=sys.stderr)
        output.complete({**config, "baseline_accuracy": baseline})
    return with_layer(tables)
