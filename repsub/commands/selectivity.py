"""`repsub selectivity` / `repsub.selectivity(...)`: class selectivity of every unit over a labelled dataset."""

from __future__ import annotations

import contextlib
import os
import sys

import pyarrow as pa
import torch

from repsub.capture.precision import resolve_precision
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.commands.context import CommandContext, check_common, say_precision
from repsub.commands.targets import basis_layer, basis_record, resolve_bases
from repsub.core.bands import BAND_NAMES, DEFAULT_RESERVOIR, EDGE_RANKS, BandAccumulator
from repsub.core.exemplars import ExemplarAccumulator
from repsub.core.quantiles import DEFAULT_K, QuantileSketches
from repsub.core.readout import UNIT, StackedReadout, UnitReadout
from repsub.data.sources import open_source
from repsub.data.thumbnails import read_thumbnails
from repsub.errors import DataError, UsageError
from repsub.models import LoadedModel
from repsub.runstore.activations import ActivationWriter
from repsub.runstore.exemplars import write_bands, write_exemplars, write_images
from repsub.runstore.provenance import Scope, basis_layer_meanings, data_meaning, selectivity_meaning
from repsub.runstore.tables import (
    STORED_RANKS,
    band_edges,
    quantiles_table,
    selectivity_table,
    with_basis,
    with_layer,
)
from repsub.validate import check_int

DEFAULT_EXEMPLARS = 16


def selectivity(
    model: str | LoadedModel | torch.nn.Module | None = None,
    weights: str | None = None,
    data: str | os.PathLike = "",
    out: str | os.PathLike | None = None,
    image_size: int | None = None,
    layers: list[str] | None = None,
    batch_size: int = 64,
    reduce: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    workers: int = 2,
    progress: bool = True,
    save_activations: list[str] | str | None = None,
    precision: str = "auto",
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    allow_mixed: bool = False,
    force_unlock: bool = False,
    exemplars: int = DEFAULT_EXEMPLARS,
    quantile_k: int = DEFAULT_K,
    bands: bool | None = None,
    band_sample: int = DEFAULT_RESERVOIR,
    basis=None,
) -> pa.Table:
    """Class selectivity of every unit of `layers` (default: all) over `data` (an ImageFolder directory
    or an FFCV .beton file from `repsub prepare`).

    Streams the dataset once, accumulating float64 per-class sums of every layer together. Returns
    the selectivity table (with its `layer` column) and, if `out` is given, writes it into that run.
    `save_activations` (layers among `layers`) also streams every image's activations of those layers
    into `out`/activations/ (repsub.runstore.activations), one row per image per layer. `reduce` (how a conv
    channel's map becomes one value: mean, max, center) defaults to the run's, else mean. `precision`
    (auto, fp32, bf16) is that of the forward; class sums are float64 in every case. `exemplars` (k, 0: none)
    keeps, in the same pass, every unit's k top and k bottom images (repsub.core.exemplars) and writes them into
    `out`/exemplars/, with the thumbnails of the images they refer to in `out`/images/ (nothing without `out`).
    `quantile_k` (0: none) sketches every unit's activation over the data in the same pass (KLL of that k:
    repsub.core.quantiles) and writes its values at STORED_RANKS into `out`/quantiles/. `bands` (default: on
    where quantiles are) then runs a second pass, the band pass: every unit's images per class in each band
    between its stored quantiles at EDGE_RANKS, and a seeded sample of `band_sample` image indices per band
    (repsub.core.bands), into `out`/bands/, their thumbnails into `out`/images/.

    Into an existing run, what is not given is the run's (repsub.commands.extend): `model` None re-creates its
    model (weights verified by hash), `weights` None takes its weights where `model` is its model, and the
    seed, `layers` (`["all"]`: every layer) and `image_size` are its own; what was taken is printed.

    `basis` (a readout object, repsub.core.readout, or a basis name of the run; None or "unit": the units)
    measures the basis's directions at its layer instead: each direction's response at every position,
    reduced as units are; the rows carry the basis's name. Several bases (a comma list "unit,pca,sae", or a
    list) are measured in the same single pass (a StackedReadout per layer): the units at every layer of the
    command when "unit" is among them, each other basis at its layer; each basis's rows equal those of a
    pass of its own, bit for bit. Exemplars, quantiles and saved activations are the units': only with
    "unit" among the bases.

    Writing into `out` holds its lock and refuses rows of another meaning beside the run's (other data or
    image size in the selectivity table) unless `allow_mixed`; `force_unlock` removes a lock whose holder is
    gone (README, "Run integrity").
    """
    check_common(image_size=image_size, batch_size=batch_size, workers=workers, seed=seed)
    check_int(exemplars, "--exemplars", 0)
    check_int(quantile_k, "--quantile-k", 0)
    if quantile_k and quantile_k < 8:
        raise UsageError(f"--quantile-k {quantile_k}: the sketch needs k >= 8 (or 0: no quantiles)")
    check_int(band_sample, "--band-sample", 0)
    _check_bands(bands, quantile_k, out)
    ctx = CommandContext.open("selectivity", out=out, model=model, weights=weights, seed=seed, device=device,
                              layers=layers, image_size=image_size, mean=mean, std=std)  # fmt: skip
    used_precision = resolve_precision(precision, ctx.device)
    loaded, chosen = ctx.model, ctx.layers
    with_units, readouts = resolve_bases(basis, out, [layer.name for layer in ctx.layers])
    placed = {readout.name: basis_layer(readout, chosen, layers)[0].name for readout in readouts}
    if bands and not with_units:
        raise UsageError("--bands are the units' (their quantiles): give --basis unit,... or none")
    if not with_units:
        chosen = [layer for layer in chosen if layer.name in placed.values()]
        if save_activations:
            raise UsageError(
                "--save-activations stores the units' activations: give --basis unit,... or none"
            )
        exemplars = 0
    parts = {layer.name: [UnitReadout(layer.n_units, layer.name)] * with_units
             + [readout for readout in readouts if placed[readout.name] == layer.name]
             for layer in chosen}  # fmt: skip
    saved = _activation_layers(save_activations, chosen, loaded, out)
    size = ctx.image_size(image_size, batch=batch_size)
    ctx.record.say()
    source = open_source(data, size, loaded.mean, loaded.std, loaded.resize_ratio)
    if len(source.classes) < 2:
        raise DataError(
            f"--data {data}: {len(source.classes)} class(es); selectivity needs two classes or more"
        )
    if len(source.classes) != loaded.num_classes:
        # Selectivity does not need the two to match, but a mismatch usually means the wrong data or weights.
        print(
            f"note: {data} has {len(source.classes)} classes, the model's classifier {loaded.num_classes}",
            file=sys.stderr,
        )
    reduce = ctx.reduce(reduce)
    config = {
        "data": source.describe(),
        "image_size": size,
        "layers": [layer.name for layer in chosen],
        "batch_size": batch_size,
        "reduce": reduce,
        "seed": ctx.seed,
        "device": str(ctx.device),
        "precision": used_precision.to_dict(),
    }
    keep = exemplars if out is not None else 0  # exemplars are only worth their work when written
    if keep:
        config["exemplars"] = keep
    sketch_k = quantile_k if out is not None and with_units else 0  # quantiles: of the units
    if sketch_k:
        config["quantile_k"] = sketch_k
    if len(readouts) == 1 and not with_units:
        config["basis"] = basis_record(readouts[0])
    elif readouts:
        config["bases"] = [UNIT] * with_units + [basis_record(readout) for readout in readouts]
    band_pass = bool(sketch_k) and bands is not False
    if band_pass:
        config["bands"] = {"edge_ranks": list(EDGE_RANKS), "names": list(BAND_NAMES), "sample": band_sample,
                           "seed": ctx.seed}  # fmt: skip
    say_precision(used_precision, "selectivity")
    meaning = selectivity_meaning(source, size)
    unit_layers = dict.fromkeys(config["layers"]) if with_units else {}
    tables_written = ("selectivity", *(["exemplars"] if keep else []), *(["quantiles"] if sketch_k else []),
                      *(["bands"] if band_pass else []))  # fmt: skip
    scopes = [Scope(table, None, unit_layers, meaning) for table in tables_written if unit_layers]
    scopes += [Scope("selectivity", None, {placed[readout.name]: None}, meaning, basis=readout.name,
                     layer_meanings=basis_layer_meanings({placed[readout.name]: readout}))
               for readout in readouts]  # fmt: skip
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(ctx.writing(
            "selectivity", config, scopes, reduce=reduce, allow_mixed=allow_mixed, force_unlock=force_unlock
        ))  # fmt: skip
        sink = None
        if saved:
            sink = stack.enter_context(
                ActivationWriter(output.writer, {layer.name: layer.n_units for layer in saved})
            )
        kept = (
            ExemplarAccumulator({layer.name: layer.n_units for layer in chosen}, keep, device=ctx.device)
            if keep
            else None
        )
        layer_units = {layer.name: layer.n_units for layer in chosen}
        sketches = QuantileSketches(layer_units, sketch_k) if sketch_k else None
        on_batch = _units_of(each_batch(
            sink.add if sink else None, kept.add if kept else None, sketches.add if sketches else None
        ), layer_units)  # fmt: skip
        acc = accumulate_class_sums(
            loaded,
            chosen,
            source.batches(batch_size, workers=workers, device=ctx.device),
            len(source.classes),
            reduce=reduce,
            device=ctx.device,
            total=len(source),
            progress=progress,
            on_batch=on_batch,
            precision=used_precision,
            readouts=_pass_readouts(parts),
        )
        if acc.n_images != len(source):
            raise DataError(f"the pass saw {acc.n_images} images, {data} holds {len(source)}")
        activation_rows = sink.row_groups() if sink else None
        if sink:
            sink.commit()  # in place before the manifest records the command
        tables = _basis_tables(acc, parts)
        for (name, _), table in tables.items():
            output.write("selectivity", name, table)
        quantiles = {}
        if sketches is not None:
            for name in layer_units:
                quantiles[name] = sketches.quantiles(name, STORED_RANKS)
                rows = quantiles_table(quantiles[name], sketches.k, sketches.rank_error, sketches.n_images)
                output.write("quantiles", name, rows)
        banded = None
        if band_pass:  # edges: exactly the stored quantiles
            edges = {name: band_edges(values) for name, values in quantiles.items()}
            banded = BandAccumulator(edges, len(source.classes), band_sample, ctx.seed, device=ctx.device)
            second = accumulate_class_sums(
                loaded, chosen, source.batches(batch_size, workers=workers, device=ctx.device),
                len(source.classes), reduce=reduce, device=ctx.device, total=len(source), progress=progress,
                on_batch=banded.add, precision=used_precision, desc="band pass",
            )  # fmt: skip
            if second.n_images != acc.n_images:
                raise DataError(f"the band pass saw {second.n_images} images, the first pass {acc.n_images}")
            write_bands(output.writer, banded, list(layer_units))
        if kept is not None:
            write_exemplars(output.writer, kept, list(layer_units))
        if kept is not None or banded is not None:
            indices = referenced_images(kept, banded)
            store_thumbnails(output.writer, source, indices, loaded, batch_size, workers, progress)
        config["n_images"] = acc.n_images
        if saved:
            config["save_activations"] = [layer.name for layer in saved]
            config["activations_row_group_rows"] = activation_rows
        output.complete(config)
    return pa.concat_tables(with_layer({name: table}) for (name, _), table in tables.items())


def _pass_readouts(parts: dict[str, list]) -> dict:
    """The readout of each layer's pass: none where the units alone are read, a basis alone as itself, else
    the bases side by side (the units first)."""
    readouts = {}
    for name, layer_parts in parts.items():
        if len(layer_parts) == 1:
            if not isinstance(layer_parts[0], UnitReadout):
                readouts[name] = layer_parts[0]
        else:
            readouts[name] = StackedReadout(layer_parts)
    return readouts


def _basis_tables(acc, parts: dict[str, list]) -> dict[tuple[str, str], pa.Table]:
    """The selectivity rows of every (layer, basis) of the pass, from its class means split by basis."""
    tables = {}
    for name, layer_parts in parts.items():
        means = acc.class_means(name)
        start = 0
        for part in layer_parts:
            rows = selectivity_table(means[:, start : start + part.K], acc.n_images)
            tables[name, part.name] = with_basis(rows, None if isinstance(part, UnitReadout) else part)
            start += part.K
    return tables


def _units_of(callback, layer_units: dict[str, int]):
    """`callback` (exemplars, quantiles, saved activations: the units') seeing each layer's units only: the
    first values of a pass that reads bases beside them."""
    if callback is None:
        return None

    def units_only(activations, *rest):
        callback(
            {name: values[:, : layer_units[name]].contiguous() for name, values in activations.items()}, *rest
        )

    return units_only


def each_batch(*callbacks):
    """One on_batch callback calling each of `callbacks` (None ones left out); None if there is none."""
    present = [callback for callback in callbacks if callback is not None]
    if not present:
        return None

    def each(*batch):  # (activations, labels[, index]): whatever the pass hands over
        for callback in present:
            callback(*batch)

    return each


def _check_bands(bands, quantile_k: int, out) -> None:
    """--bands asked for where the band pass cannot run: refused, with why."""
    if bands not in (None, True, False):
        raise UsageError(f"--bands must be true or false, got {bands!r}")
    if not bands:
        return
    if not quantile_k:
        raise UsageError(
            "--bands draws each unit's band edges from its quantiles: not with --quantile-k 0 (give a k >= 8)"
        )
    if out is None:
        raise UsageError("--bands writes into a run: give --out")


def referenced_images(*accumulators) -> list[int]:
    """The image indices that exemplars and bands (accumulators with `image_indices`; None left out) refer
    to, sorted, once each."""
    found = set()
    for accumulator in accumulators:
        if accumulator is not None:
            found.update(i for i in accumulator.image_indices().tolist() if i >= 0)
    return sorted(found)


def store_thumbnails(writer, source, indices: list[int], model: LoadedModel, batch_size: int, workers: int,
                     progress: bool) -> int:  # fmt: skip
    """The thumbnails of the images `indices` (referenced_images), read once each from `source` into the run."""
    batches = read_thumbnails(source, indices, model.mean, model.std, batch_size=batch_size, workers=workers,
                              progress=progress)  # fmt: skip
    return write_images(writer, batches, data_meaning(source)["location"])


def _activation_layers(names, chosen, loaded: LoadedModel, out) -> list:
    """The layers of `save_activations`: known, among the pass's layers, and with a run to write into."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if not names:
        return []
    wanted = loaded.select(list(names))  # unknown names: UsageError
    chosen_names = {layer.name for layer in chosen}
    outside = [layer.name for layer in wanted if layer.name not in chosen_names]
    if outside:
        raise UsageError(
            f"--save-activations {','.join(outside)}: not among the pass's --layers "
            f"({', '.join(sorted(chosen_names))})"
        )
    if out is None:
        raise UsageError("--save-activations writes into a run: give --out")
    return wanted
