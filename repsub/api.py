"""The Python API: every CLI command is a thin layer over these functions.

>>> import repsub
>>> repsub.selectivity(model="vgg16", weights="random", data="images/", image_size=64, out="runs/r1")
>>> repsub.visualize(model="vgg16", weights="random", method="iam", layers=["conv3_1"], units="0-15",
...                  steps=64, image_size=64, out="runs/r1")
>>> run = repsub.open_run("runs/r1")

`model` is a registered name (`repsub layers --list-models`: the paper's models and every torchvision
classification model), a LoadedModel, or any nn.Module with its `layers` (module names), `image_size`, `mean`
and `std` (no registration):

>>> repsub.visualize(model=my_net, layers=["block1", "head"], image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
...                  method="am", steps=64, out="runs/mine")
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace

import pyarrow as pa
import torch

from .activations import ActivationWriter
from .capture import REDUCTIONS
from .data.sources import open_source
from .errors import DataError, UsageError
from .extend import RunRecord, layers_for_run, load_for_run, selectivity_size_for_run, settings_for_run
from .models import LoadedModel, resolve_model
from .optimize import OptimSettings, UnitProgress, optimize_units
from .optimize.objectives import METHODS
from .precision import default_device, resolve_precision
from .provenance import Scope, selectivity_meaning, units_meaning
from .selectivity_pass import accumulate_class_sums
from .store import RunWriter
from .tables import selectivity_table, units_table, with_layer
from .units import parse_units, ranges_text
from .validate import check_image_size, check_int, check_seed

DEFAULT_REDUCE = "mean"


def run_reduce(writer: RunWriter | None, reduce: str | None) -> str:
    """The spatial reduction of conv units for this command: the one asked for, else the run's, else mean.

    Selectivity, the AM/IAM objectives and RS of one run must share it (check_run refuses a mismatch)."""
    if reduce is None:
        reduce = (writer.run_invariant("reduce") if writer else None) or DEFAULT_REDUCE
    if reduce not in REDUCTIONS:
        raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
    return reduce


def _say_precision(precision, what: str) -> None:
    if precision.requested == "auto":
        print(f"{what}: precision {precision.used} ({precision.reason})", file=sys.stderr)


def _as_model(model, weights, seed, device, layers=None, image_size=None, mean=None, std=None) -> LoadedModel:
    """A registered name, a LoadedModel, or an nn.Module with its layers, input size and normalization."""
    return resolve_model(
        model, weights, seed=seed, device=device, layers=layers, image_size=image_size, mean=mean, std=std
    )


def run_catalog(loaded: LoadedModel, writer: RunWriter) -> list[dict]:
    """The model's catalog for the manifest, with the layers earlier commands of the run read by module name."""
    earlier = (writer.read_manifest() or {}).get("catalog") or []
    return loaded.catalog_records(also=[record["name"] for record in earlier])


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
) -> pa.Table:
    """Class selectivity of every unit of `layers` (default: all) over `data` (an ImageFolder directory
    or an FFCV .beton file from `repsub prepare`).

    Streams the dataset once, accumulating float64 per-class sums of every layer together. Returns
    the selectivity table (with its `layer` column) and, if `out` is given, writes it into that run.
    `save_activations` (layers among `layers`) also streams every image's activations of those layers
    into `out`/activations/ (repsub.activations), one row per image per layer. `reduce` (how a conv
    channel's map becomes one value: mean, max, center) defaults to the run's, else mean. `precision`
    (auto, fp32, bf16) is that of the forward; class sums are float64 in every case.

    Into an existing run, what is not given is the run's (repsub.extend): `model` None re-creates its model
    (weights verified by hash), `weights` None takes its weights where `model` is its model, and the seed,
    `layers` (`["all"]`: every layer) and `image_size` are its own; what was taken is printed.

    Writing into `out` holds its lock and refuses rows of another meaning beside the run's (other data or
    image size in the selectivity table) unless `allow_mixed`; `force_unlock` removes a lock whose holder is
    gone (README, "Run integrity").
    """
    _check_common(image_size=image_size, batch_size=batch_size, workers=workers, seed=seed)
    device = device or default_device()
    used_precision = resolve_precision(precision, device)
    record = RunRecord.read(out)
    run_size = record.selectivity_image_size() or record.settings().get("image_size")
    loaded, seed, reuse = load_for_run(record, model, weights, seed, device, image_size, mean, std, run_size)
    layers = layers_for_run(record, layers, reuse, [layer.name for layer in loaded.layers])
    chosen = loaded.select(layers)
    saved = _activation_layers(save_activations, chosen, loaded, out)
    size = image_size or selectivity_size_for_run(record, reuse) or loaded.image_size
    record.say()
    check_image_size(loaded, size)
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
    writer = RunWriter(out) if out is not None else None
    reduce = run_reduce(writer, reduce)
    config = {
        "data": source.describe(),
        "image_size": size,
        "layers": [layer.name for layer in chosen],
        "batch_size": batch_size,
        "reduce": reduce,
        "seed": seed,
        "device": str(device),
        "precision": used_precision.to_dict(),
    }
    _say_precision(used_precision, "selectivity")
    with contextlib.ExitStack() as stack:
        session = None
        if writer:  # checks the run and mixing, takes the lock, claims the run: before any row
            meaning = selectivity_meaning(source, size)
            scope = Scope("selectivity", None, dict.fromkeys(config["layers"]), meaning)
            session = stack.enter_context(writer.writing(
                "selectivity", loaded.identity(), config, [scope], invariants={"reduce": reduce},
                catalog=run_catalog(loaded, writer), allow_mixed=allow_mixed, force_unlock=force_unlock,
            ))  # fmt: skip
        sink = None
        if saved:
            sink = stack.enter_context(ActivationWriter(writer, {layer.name: layer.units for layer in saved}))
        acc = accumulate_class_sums(
            loaded,
            chosen,
            source.batches(batch_size, workers=workers, device=device),
            len(source.classes),
            reduce=reduce,
            device=device,
            total=len(source),
            progress=progress,
            on_batch=sink.add if sink else None,
            precision=used_precision,
        )
        if acc.n_images != len(source):
            raise DataError(f"the pass saw {acc.n_images} images, {data} holds {len(source)}")
        activation_rows = sink.row_groups() if sink else None
        if sink:
            sink.commit()  # in place before the manifest records the command
        n = acc.n_images
        tables = {layer.name: selectivity_table(acc.class_means(layer.name), n) for layer in chosen}
        if session:
            for name, table in tables.items():
                writer.write_selectivity(name, table)
            config["n_images"] = acc.n_images
            if saved:
                config["save_activations"] = [layer.name for layer in saved]
                config["activations_row_group_rows"] = activation_rows
            session.complete(config, run_catalog(loaded, writer))
    return with_layer(tables)


def _check_common(image_size=None, batch_size=None, workers=None, seed=None, images=None) -> None:
    """The numeric options every command shares, refused with their value before any work."""
    checks = (("--image-size", image_size, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0),
              ("--images", images, 1))  # fmt: skip
    for option, value, minimum in checks:
        if value is not None:
            check_int(value, option, minimum)
    if seed is not None:
        check_seed(seed)


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


def visualize(
    model: str | LoadedModel | torch.nn.Module | None = None,
    weights: str | None = None,
    method: str = "am",
    layers: list[str] | None = None,
    units: str | list[int] | None = None,
    out: str | os.PathLike | None = None,
    settings: OptimSettings | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = True,
    reduce: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    allow_mixed: bool = False,
    force_unlock: bool = False,
    **setting_overrides,
) -> pa.Table:
    """AM or IAM images for the units of `layers` (default: all), with their layer activations and RS.

    `units` ('0-15', a list, or None for all) applies to every layer. Settings default to
    OptimSettings(); keyword overrides (steps=..., image_size=..., lr=..., precision=...) replace
    single fields. `reduce` (conv units' spatial reduction) defaults to the run's, else mean: the
    objective and RS use the reduction of the run's selectivity. Returns the units table (with its
    `layer` column, one row per unit with its status); writes it into the run `out` if given.

    Into an existing run, what is not given is the run's (repsub.extend): `model` None re-creates its model
    (weights verified by hash), `weights` None takes its weights where `model` is its model, and the seed,
    `layers` (`["all"]`: every layer) and, without `settings`, the optimization settings of its latest
    visualize or sweep (image size, steps, lr, ...; not precision) are its own; what was taken is printed.

    Writing into `out` holds its lock and refuses units of this method at another image size (or
    parameterization, own term, transforms) beside the run's unless `allow_mixed`; `force_unlock` removes a
    lock whose holder is gone (README, "Run integrity").
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    _check_common(seed=seed)
    device = device or default_device()
    given_size = setting_overrides.get("image_size") or (settings.image_size if settings else None)
    record = RunRecord.read(out)
    run_size = record.settings().get("image_size") or record.selectivity_image_size()
    loaded, seed, reuse = load_for_run(record, model, weights, seed, device, given_size, mean, std, run_size)
    layers = layers_for_run(record, layers, reuse, [layer.name for layer in loaded.layers])
    chosen = loaded.select(layers)
    if settings is None:  # the run's, else the defaults at the model's own size (a custom module: as given)
        settings = settings_for_run(record, setting_overrides, reuse, loaded.image_size)
    else:
        settings = replace(settings, **setting_overrides)
    record.say()
    settings.validate()
    check_image_size(loaded, settings.image_size)
    unit_lists = {layer.name: parse_units(units, layer.units, layer.name) for layer in chosen}
    writer = RunWriter(out) if out is not None else None
    reduce = run_reduce(writer, reduce)
    precision = resolve_precision(settings.precision, device)
    config = {
        "method": method,
        "layers": list(unit_lists),
        "units": units if isinstance(units, str | None) else list(units),
        "seed": seed,
        "device": str(device),
        "reduce": reduce,
        "precision": precision.to_dict(),
        "settings": settings.to_dict(),
    }
    _say_precision(precision, method)
    tables = {}
    total = sum(len(u) for u in unit_lists.values())
    with contextlib.ExitStack() as stack:
        session = None
        if writer:  # checks the run and mixing, takes the lock, claims the run: before any row
            scope = Scope("units", method, {name: ranges_text(u) for name, u in unit_lists.items()},
                          units_meaning(settings))  # fmt: skip
            session = stack.enter_context(writer.writing(
                f"visualize/{method}", loaded.identity(), config, [scope], invariants={"reduce": reduce},
                catalog=run_catalog(loaded, writer), allow_mixed=allow_mixed, force_unlock=force_unlock,
            ))  # fmt: skip
        with UnitProgress(total, settings.steps, enabled=progress) as bar:
            for layer in chosen:
                result = optimize_units(
                    loaded, layer, unit_lists[layer.name], method, settings,
                    run_seed=seed, device=device, progress=bar, reduce=reduce,
                )  # fmt: skip
                tables[layer.name] = units_table(method, result, settings.steps)
                if session:  # each layer lands as soon as it is done
                    writer.write_units(method, layer.name, tables[layer.name])
        _warn_failures(method, tables)
        if session:
            session.complete(config, run_catalog(loaded, writer))
    return with_layer(tables)


def _warn_failures(method: str, tables: dict[str, pa.Table]) -> None:
    """Say which layers have units whose optimization did not work (their rows say so too)."""
    for name, table in tables.items():
        statuses = table.column("status").to_pylist()
        bad = {s: statuses.count(s) for s in sorted(set(statuses)) if s != "ok"}
        if bad:
            counts = ", ".join(f"{count} {status}" for status, count in bad.items())
            print(
                f"note: {method} {name}: {counts} of {len(statuses)} units (status column)", file=sys.stderr
            )


from .importance.command import importance  # noqa: E402, F401  (re-exported: the API's third command)
