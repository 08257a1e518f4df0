"""`repsub basis fit` / `repsub.fit_basis(...)` and `repsub basis list`: bases of a layer's activation space,
fitted on the run's data and stored in the run (issue 18; README, "Bases").

A basis of a layer is fitted on activation vectors sampled from the data (repsub.capture.positions: up to
`positions` per image, chosen by a generator seeded from (seed, image index); a fifth of the images held out
for the metrics), by the solver of its kind (repsub.core.bases), and stored with its metrics under a content
hash the manifest records (repsub.runstore.bases). The model is the run's; the data and image size are those of
the run's selectivity unless given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from repsub.capture.positions import HELD_OUT_SHARE, Sample, sample_vectors
from repsub.commands.context import CommandContext, check_common
from repsub.core.bases.basis import Basis
from repsub.core.bases.fit import DEFAULT_EXPANSION, KINDS
from repsub.core.bases.fit import fit_basis as fit_one
from repsub.core.bases.metrics import basis_metrics
from repsub.core.bases.pca import PcaSums
from repsub.data.sources import open_source
from repsub.data.subset import balanced_subset
from repsub.errors import DataError, UsageError
from repsub.runstore.bases import (
    UNIT,
    basis_row,
    check_basis_name,
    manifest_entry,
    read_basis,
    recorded_bases,
    refuse_refit,
    write_basis,
)
from repsub.runstore.manifest import now_utc
from repsub.runstore.provenance import Scope, data_meaning, forget_basis_rows
from repsub.runstore.reader import RunReader
from repsub.runstore.tables import BASES
from repsub.validate import check_int

DEFAULT_POSITIONS = 16
MEASURED_TABLES = ("selectivity", "units", "importance")  # the tables whose rows a basis's targets have
NO_SECOND_FIT = ("unit", "vectors")  # nothing seeded to refit: their stability is not measured
LISTED = ["layer", "name", "kind", "size", "n_channels", "signed", "hash", "fve", "mean_l0", "dead", "stability",
          "n_fit", "n_held_out"]  # fmt: skip


def fit_basis(
    run: str | os.PathLike,
    layers: list[str] | None = None,
    kind: str = "pca",
    size: int | None = None,
    name: str | None = None,
    data: str | os.PathLike | None = None,
    positions: int = DEFAULT_POSITIONS,
    seed: int | None = None,
    expansion: int = DEFAULT_EXPANSION,
    top_k: int | None = None,
    vectors: str | os.PathLike | None = None,
    images: int | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    workers: int = 2,
    stability: bool = True,
    replace: bool = False,
    sae_epochs: int = 20,
    force_unlock: bool = False,
    model=None,
    weights: str | None = None,
) -> pa.Table:
    """Fit a basis of `kind` (repsub.core.bases.fit.KINDS) with `size` directions on each of `layers` (default:
    the run's) of the run `run`, and store it there under `name` (default: the kind). Returns the `bases` rows
    (without their tensors).

    The vectors: up to `positions` per image of `data` (default: the run's selectivity data), `images` a seeded
    class-balanced subset (default: all), at the run's image size; a fifth of the images held out for the
    metrics (FVE, mean L0, dead directions) and, with `stability`, a second fit with seed + 1 to match against.
    `expansion` (sae: K = expansion x C unless `size`), `top_k` (sae: active latents, default C / 8),
    `sae_epochs`, `vectors` (a .npy or .pt file of K x C directions, for kind `vectors`). A name the run already
    holds with another fit is refused unless `replace`; a replaced fit takes with it the rows measured with it
    (its selectivity, units and importance rows of that layer), so that no row of the old fit ever sits beside
    rows of the new one."""
    if kind not in KINDS:
        raise UsageError(f"unknown basis kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind == UNIT:
        raise UsageError("the unit basis (the identity) is every run's already: nothing to fit")
    name = check_basis_name(name or kind)
    check_common(image_size=image_size, batch_size=batch_size, workers=workers, seed=seed, images=images)
    check_int(positions, "--positions", 1)
    check_int(expansion, "--expansion", 1)
    check_int(sae_epochs, "--sae-epochs", 1)
    if size is not None:
        check_int(size, "--size", 1)
    if (vectors is None) != (kind != "vectors"):
        raise UsageError("--vectors FILE goes with --kind vectors, and only with it")
    ctx = CommandContext.open("selectivity", out=run, model=model, weights=weights, seed=seed, device=device,
                              layers=layers, image_size=image_size, mean=None, std=None)  # fmt: skip
    if ctx.record.manifest is None:
        raise UsageError(f"{run} holds no run: fit a basis in a run (repsub selectivity --out RUN first)")
    loaded, chosen = ctx.model, ctx.layers
    given_vectors = read_vectors(vectors) if vectors is not None else None
    data = data if data is not None else run_data(ctx.record.manifest, run)
    size_px = ctx.image_size(image_size, batch=batch_size)
    ctx.record.say()
    source = open_source(data, size_px, loaded.mean, loaded.std, loaded.resize_ratio)
    indices = balanced_subset(source.labels(), images, ctx.seed)
    samples = sample_vectors(
        loaded, chosen, source.batches(batch_size, indices=indices, workers=workers, device=ctx.device),
        indices, positions, ctx.seed, ctx.device,
    )  # fmt: skip
    fit = fit_fields(source, size_px, positions, ctx.seed, images, len(indices))
    options = fit_options(top_k, expansion, given_vectors, vectors, sae_epochs, ctx.device)
    rows = {}
    for layer in chosen:
        print(f"basis {name}: fitting {kind} on {layer.name} ({len(samples[layer.name].fit)} vectors)",
              file=sys.stderr)  # fmt: skip
        rows[layer.name] = fit_layer_basis(
            kind, name, layer.name, samples[layer.name], size, ctx.seed, options, stability, loaded.identity(),
            fit, f"--data {data}",
        )  # fmt: skip
        refuse_refit(
            ctx.record.manifest, layer.name, name, rows[layer.name].column("hash")[0].as_py(), replace
        )
    config = {**fit, "kind": kind, "name": name, "size": size, "layers": [layer.name for layer in chosen],
              "expansion": expansion, "top_k": top_k, "stability": stability, "device": str(ctx.device),
              "vectors": str(vectors) if vectors else None}  # fmt: skip
    meaning = {"kind": kind, "data": data_meaning(source), "image_size": size_px}
    scope = Scope("bases", name, dict.fromkeys(rows), meaning)
    with ctx.writing(f"basis/{name}", config, [scope], force_unlock=force_unlock) as output:
        entries, replaced = store_bases(output.writer, ctx.record.manifest, name, rows, replace)
        for layer_name in replaced:  # rows measured with the fit replaced: never beside the new fit's
            retired = output.writer.retire_basis_files(MEASURED_TABLES, layer_name, name)
            if retired:
                print(
                    f"basis {name}: {len(retired)} file(s) of rows of {layer_name} measured with the replaced "
                    "fit removed (measure them again with the new fit)",
                    file=sys.stderr,
                )
        if replaced:
            config["replaced"] = replaced

        def record(manifest: dict) -> None:
            manifest.setdefault("bases", {}).update(entries)
            for layer_name in replaced:
                forget_basis_rows(manifest, layer_name, name)

        output.complete(config, update=record)
    return pa.concat_tables(
        [row.add_column(0, "layer", pa.array([layer], pa.string())) for layer, row in rows.items()]
    ).select(LISTED)


def fit_fields(source, size_px: int, positions: int, seed: int, images: int | None, n_images: int) -> dict:
    """How a fit's vectors were sampled, as its rows record it (the command and the sweep alike)."""
    return {"data": source.describe(), "image_size": size_px, "positions": positions, "seed": seed,
            "images": images, "n_images": n_images, "held_out_share": HELD_OUT_SHARE}  # fmt: skip


def fit_options(top_k, expansion, vectors=None, vectors_path=None, sae_epochs=20, device="cpu") -> dict:
    """The kind-specific options of repsub.core.bases.fit.fit_basis, from the command's (or a sweep's) settings."""
    return {"top_k": top_k, "expansion": expansion, "vectors": vectors,
            "vectors_source": Path(vectors_path).name if vectors_path else "vectors",
            "sae_training": {"epochs": sae_epochs, "device": device}}  # fmt: skip


def fit_layer_basis(
    kind: str,
    name: str,
    layer: str,
    sample: Sample,
    size: int | None,
    seed: int,
    options: dict,
    stability: bool,
    model: dict,
    fit: dict,
    data_label: str = "the data",
    sums: PcaSums | None = None,
) -> pa.Table:
    """Fit basis `name` of `kind` on one layer's sampled vectors (`sample`, repsub.capture.positions; `sums`: pca's
    exact sums of its fit vectors, merged over a sweep's shards) with `seed`, measure it on the held-out vectors
    (and, with `stability`, against a second fit with seed + 1), and return its `bases` row (basis_row). `model`:
    the run's model identity, `fit`: fit_fields. Shared by `repsub basis fit` and the sweep's fit shards."""
    if len(sample.fit) == 0:
        raise DataError(f"{data_label}: no image left to fit {layer} on (all held out): give more images")
    basis = fit_one(kind, layer, sample.fit, size, seed, sums=sums, **options)
    basis.name = name
    refit = None
    if stability and kind not in NO_SECOND_FIT:
        refit = fit_one(kind, layer, sample.fit, size, seed + 1, sums=sums, **options)
    metrics = basis_metrics(basis, sample.held_out, refit)
    layer_fit = {**fit, "n_fit": len(sample.fit), "positions_per_image": sample.n_positions}
    return basis_row(basis.state_dict(), basis.content_hash(), model, layer_fit, metrics)


def store_bases(writer, manifest: dict | None, name: str, rows: dict[str, pa.Table],
                replace: bool) -> tuple[dict, list[str]]:  # fmt: skip
    """Write basis `name`'s rows ({layer: basis_row}) into the run, in the caller's write session; returns the
    manifest's entries for them and the layers whose earlier fit they replace. A layer whose name holds another
    fit is refused first (nothing written) unless `replace`."""
    replaced = [layer for layer, row in rows.items()
                if refuse_refit(manifest, layer, name, row.column("hash")[0].as_py(), replace)]  # fmt: skip
    fitted_at = now_utc()
    entries = {}
    for layer, row in rows.items():
        file = write_basis(writer, layer, name, row)
        entries[f"{layer}/{name}"] = manifest_entry(row, layer, file, fitted_at)
    return entries, replaced


def read_vectors(path: str | os.PathLike) -> torch.Tensor:
    """A user's directions: a .npy array (no pickle) or a .pt tensor (weights_only), K x C (checked by the basis)."""
    location = Path(path)
    if not location.is_file():
        raise UsageError(f"--vectors {path}: no such file (expected a .npy or .pt file of K x C directions)")
    try:
        if location.suffix == ".npy":
            return torch.from_numpy(np.load(location, allow_pickle=False))
        if location.suffix in (".pt", ".pth"):
            value = torch.load(location, map_location="cpu", weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise UsageError(
                    f"--vectors {path}: holds a {type(value).__name__}, not a tensor of K x C directions"
                )
            return value
    except (ValueError, OSError, RuntimeError) as err:
        raise UsageError(f"--vectors {path}: not a readable array ({err})") from None
    raise UsageError(f"--vectors {path}: expected a .npy or .pt file, got {location.suffix or 'no suffix'}")


def run_data(manifest: dict, run) -> str:
    """The data of the run's selectivity (or its sweep's), for a fit that names none."""
    commands = manifest.get("commands") or {}
    config = (commands.get("selectivity") or {}).get("config") or {}
    described = config.get("data") or {}
    if not described:
        sweep = (commands.get("sweep") or {}).get("config") or {}
        data = (sweep.get("selectivity") or {}).get("data")
        if data:
            return str(data)
    location = (described.get("staged_from") or {}).get("uri") or described.get("path")
    if not location:
        raise UsageError(f"{run} records no selectivity data to fit on: give --data")
    return str(location)


def list_bases(run: str | os.PathLike) -> pa.Table:
    """The run's bases, one row each (`LISTED` columns, without the tensors), by layer and name."""
    reader = RunReader(run)
    dataset = reader.dataset("bases")
    if dataset is None or not recorded_bases(reader.manifest):
        return pa.table({column: pa.array([], reader_type(column)) for column in LISTED})
    table = dataset.to_table(columns=LISTED)
    return table.sort_by([("layer", "ascending"), ("name", "ascending")])


def reader_type(column: str) -> pa.DataType:
    return BASES.full_schema().field(column).type


def load_basis(run: str | os.PathLike, layer: str, name: str, model: dict | None = None) -> Basis:
    """Basis `name` of `layer` stored in the run (`unit`: the identity, built from the run's catalog), checked
    against the manifest's hash and the model `model` (an identity; default: the run's)."""
    reader = RunReader(run)
    if name == UNIT:
        from repsub.core.bases.linear import unit_basis

        units = {entry.get("name"): entry.get("units") for entry in reader.manifest.get("catalog") or []}
        if layer not in units:
            raise UsageError(f"layer {layer!r} is not in the run's catalog: {', '.join(map(str, units))}")
        return unit_basis(layer, int(units[layer]))
    state = read_basis(reader, reader.manifest, layer, name, model or reader.manifest.get("model") or {})
    return Basis.from_state(state)
