"""`repsub visualize` / `repsub.visualize(...)`: AM or IAM images of units, their layer activations and RS."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace

import pyarrow as pa
import torch

from repsub.capture.precision import resolve_precision
from repsub.commands.context import CommandContext, check_common, say_precision
from repsub.commands.extend import settings_for_run
from repsub.commands.targets import basis_layer, basis_record, resolve_basis
from repsub.errors import UsageError
from repsub.models import LoadedModel
from repsub.optimize import OptimSettings, UnitProgress, optimize_units
from repsub.optimize.objectives import METHODS
from repsub.runstore.provenance import Scope, basis_layer_meanings, units_meaning
from repsub.runstore.tables import units_table, with_basis, with_layer
from repsub.selection import parse_units, ranges_text


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
    basis=None,
    **setting_overrides,
) -> pa.Table:
    """AM or IAM images for the units of `layers` (default: all), with their layer activations and RS.

    `units` ('0-15', a list, or None for all) applies to every layer. Settings default to
    OptimSettings(); keyword overrides (steps=..., image_size=..., lr=..., precision=...) replace
    single fields. `reduce` (conv units' spatial reduction) defaults to the run's, else mean: the
    objective and RS use the reduction of the run's selectivity. Returns the units table (with its
    `layer` column, one row per unit with its status); writes it into the run `out` if given.

    Into an existing run, what is not given is the run's (repsub.commands.extend): `model` None re-creates its
    model (weights verified by hash), `weights` None takes its weights where `model` is its model, and the
    seed, `layers` (`["all"]`: every layer) and, without `settings`, the optimization settings of its latest
    visualize or sweep (image size, steps, lr, ...; not precision) are its own; what was taken is printed.

    `basis` (a readout object, repsub.core.readout, or a basis name of the run; None or "unit": the units) makes
    the targets the basis's directions at its layer: `units` selects directions, AM climbs a direction's
    response, IAM its response minus the mean of the basis's other directions, RS counts the directions that
    respond more; the rows carry the basis's name.

    Writing into `out` holds its lock and refuses units of this method at another image size (or
    parameterization, own term, transforms) beside the run's unless `allow_mixed`; `force_unlock` removes a
    lock whose holder is gone (README, "Run integrity").
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    check_common(seed=seed)
    given_size = setting_overrides.get("image_size") or (settings.image_size if settings else None)
    ctx = CommandContext.open("units", out=out, model=model, weights=weights, seed=seed, device=device,
                              layers=layers, image_size=given_size, mean=mean, std=std)  # fmt: skip
    size = ctx.image_size(given_size)
    if settings is None:  # the run's, else the defaults
        settings = settings_for_run(ctx.record, setting_overrides, ctx.reuse, size)
    else:
        settings = replace(settings, **setting_overrides)
    ctx.record.say()
    settings.validate()
    ctx.check_memory(size, settings.batch_size)
    readout = resolve_basis(basis, out, [layer.name for layer in ctx.layers])
    chosen = ctx.layers if readout is None else basis_layer(readout, ctx.layers, layers)
    counts = {layer.name: layer.n_units if readout is None else readout.K for layer in chosen}
    unit_lists = {layer.name: parse_units(units, counts[layer.name], layer.name) for layer in chosen}
    reduce = ctx.reduce(reduce)
    precision = resolve_precision(settings.precision, ctx.device)
    config = {
        "method": method,
        "layers": list(unit_lists),
        "units": units if isinstance(units, str | None) else list(units),
        "seed": ctx.seed,
        "device": str(ctx.device),
        "reduce": reduce,
        "precision": precision.to_dict(),
        "settings": settings.to_dict(),
    }
    if readout is not None:
        config["basis"] = basis_record(readout)
    say_precision(precision, method)
    tables = {}
    total = sum(len(u) for u in unit_lists.values())
    scope = Scope("units", method, {name: ranges_text(u) for name, u in unit_lists.items()},
                  units_meaning(settings), basis=_name(readout),
                  layer_meanings=basis_layer_meanings(dict.fromkeys(unit_lists, readout)))  # fmt: skip
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(ctx.writing(
            f"visualize/{method}", config, [scope], reduce=reduce, allow_mixed=allow_mixed,
            force_unlock=force_unlock,
        ))  # fmt: skip
        with UnitProgress(total, settings.steps, enabled=progress) as bar:
            for layer in chosen:
                result = optimize_units(
                    ctx.model, layer, unit_lists[layer.name], method, settings,
                    run_seed=ctx.seed, device=ctx.device, progress=bar, reduce=reduce, readout=readout,
                )  # fmt: skip
                tables[layer.name] = with_basis(units_table(method, result), readout)
                output.write("units", layer.name, tables[layer.name])  # each layer lands when done
        _warn_failures(method, tables, settings.steps)
        output.complete(config)
    return with_layer(tables)


def _name(readout) -> str:
    return "unit" if readout is None else readout.name


def _warn_failures(method: str, tables: dict[str, pa.Table], steps: int) -> None:
    """Say which layers have units whose optimization did not work, and how many took rescue rounds (their
    rows say so too: status, steps)."""
    for name, table in tables.items():
        statuses = table.column("status").to_pylist()
        bad = {s: statuses.count(s) for s in sorted(set(statuses)) if s != "ok"}
        rescued = sum(taken > steps for taken in table.column("steps").to_pylist())
        said = [f"{count} {status}" for status, count in bad.items()]
        said += [f"{rescued} rescued (more than {steps} steps)"] if rescued else []
        if said:
            print(f"note: {method} {name}: {', '.join(said)} of {len(statuses)} units (status, steps columns)",
                  file=sys.stderr)  # fmt: skip
