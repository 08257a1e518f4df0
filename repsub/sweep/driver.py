"""The sweep driver: plan, skip what is done, run the rest on Ray, merge, write the manifest last."""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from repsub.analysis.run import open_run
from repsub.analysis.summary import run_summary
from repsub.commands.basis import store_bases
from repsub.commands.context import CommandContext
from repsub.commands.selectivity import referenced_images, store_thumbnails
from repsub.core.bands import BandAccumulator
from repsub.core.bases.basis import Basis
from repsub.core.exemplars import ExemplarAccumulator
from repsub.core.quantiles import QuantileSketches
from repsub.core.readout import StackedReadout
from repsub.core.selectivity import ClassMeanAccumulator
from repsub.data.sources import open_source
from repsub.data.subset import balanced_subset
from repsub.errors import RepsubError, UsageError
from repsub.models import resolve_model
from repsub.runstore.bases import recorded_bases, refuse_refit, row_state
from repsub.runstore.exemplars import write_bands, write_exemplars
from repsub.runstore.provenance import (
    Scope,
    basis_layer_meanings,
    data_meaning,
    importance_meaning,
    selectivity_meaning,
    units_meaning,
)
from repsub.runstore.storage import configure_s3
from repsub.runstore.tables import (
    STORED_RANKS,
    TABLES,
    file_key,
    quantiles_table,
    selectivity_table,
    with_basis,
)
from repsub.runstore.writer import RunWriter
from repsub.selection import ranges_text, units_within
from repsub.sweep.address import check_address
from repsub.sweep.commit import ShardLedger
from repsub.sweep.config import SweepConfig
from repsub.sweep.plan import (
    BandShard,
    DataShard,
    FitDataShard,
    FitShard,
    ImportanceShard,
    UnitShard,
    plan_band_shards,
    plan_basis_shards,
    plan_data_shards,
    plan_fit_shards,
    plan_importance_shards,
    plan_unit_shards,
)
from repsub.validate import check_output_dir


class SweepError(RepsubError):
    """Some shards failed; the others finished and are committed, so a rerun computes only those."""


def run_sweep(
    config: SweepConfig, address: str | None = None, progress: bool = True, force_unlock: bool = False
) -> list[dict]:
    """Run a whole sweep (selectivity pass and every unit's optimization) and return the per-layer summary.

    Writes in the run's write session (repsub.runstore.session): its lock is held throughout, so any other writer
    of the location is refused. `force_unlock` removes a stale lock left by a command that died on another
    host."""
    check_address(address)  # before the lock: no 30 s wait, no traceback
    check_output_dir(config.out, "out")
    configure_s3(config.storage.endpoint_url, config.storage.region)
    model = resolve_model(config.model, config.weights, seed=config.seed, device="cpu")  # identity, catalog
    layer_names = config.layer_names(model.layers)
    # The layers read by module name join the catalog the manifest records.
    ctx = CommandContext.for_model("units", model, layer_names, config.out, config.seed)
    ctx.image_size(config.optimization.image_size, "optimization.image_size")
    ctx.image_size(config.selectivity_image_size(), "selectivity.image_size")
    ctx.image_size(config.importance_image_size(), "importance.image_size")
    writer = ctx.writer
    source = None
    if config.selectivity.data:
        source = open_source(
            config.selectivity.data,
            config.selectivity_image_size(),
            model.mean,
            model.std,
            model.resize_ratio,
        )
    importance_source = _check_importance_data(config, model) if config.importance.data else None
    unit_shards = plan_unit_shards(config, model.num_classes) + plan_importance_shards(
        config, model.num_classes
    )
    if not unit_shards:
        raise UsageError(f"units {config.units!r} selects no unit of the layers {', '.join(layer_names)}")
    scopes = _scopes(config, model, layer_names, source, importance_source)
    with ctx.writing(
        "sweep", _record(config), scopes, reduce=config.reduce, allow_mixed=config.allow_mixed,
        force_unlock=force_unlock, keep_on_failure=lambda: bool(ShardLedger(writer, config.fingerprint()).done()),
    ) as output:  # fmt: skip
        return _run_locked(config, address, progress, model, writer, output, source, unit_shards)


def _record(config: SweepConfig, **extra) -> dict:
    return {**config.to_dict(), "fingerprint": config.fingerprint(), **extra}


def _scopes(config: SweepConfig, model, layer_names, source, importance_source) -> list[Scope]:
    """What the sweep writes, table by table, and what its rows mean (repsub.runstore.provenance)."""
    layers = model.select(layer_names)
    units = {layer.name: ranges_text(units_within(config.units, layer.n_units)) for layer in layers}
    units = {name: text for name, text in units.items() if text}
    scopes = [Scope("units", method, units, units_meaning(config.optimization)) for method in config.methods]
    if source is not None:
        meaning = selectivity_meaning(source, config.selectivity_image_size())
        scopes.append(Scope("selectivity", None, dict.fromkeys(layer_names), meaning))
        written = [("exemplars", config.selectivity.exemplars), ("quantiles", config.selectivity.quantile_k),
                   ("bands", config.selectivity.band_phase)]  # fmt: skip
        scopes += [Scope(table, None, dict.fromkeys(layer_names), meaning) for table, on in written if on]
        for spec in config.bases:  # as `repsub basis fit` claims them
            fitted = {
                "kind": spec.kind,
                "data": data_meaning(source),
                "image_size": config.selectivity_image_size(),
            }
            scopes.append(Scope("bases", spec.name, dict.fromkeys(spec.layers), fitted))
    if importance_source is not None:
        images = len(balanced_subset(importance_source.labels(), config.importance.images, config.seed))
        meaning = importance_meaning(importance_source, config.importance_image_size(), images)
        scopes.append(Scope("importance", config.importance.ablation, units, meaning))
    return scopes


def _run_locked(config, address, progress, model, writer, output, source, unit_shards) -> list[dict]:
    from repsub.sweep import ray_runner

    ledger = ShardLedger(writer, config.fingerprint())
    layer_names = config.layer_names(model.layers)
    data_shards: list[DataShard] = []
    fit_data: list[FitDataShard] = []
    fit_shards: list[FitShard] = []
    basis_shards: list = []
    classes: list[str] = []
    if source is not None:
        classes = source.classes
        data_shards = plan_data_shards(len(source), config.selectivity.images_per_shard)
        fit_data, fit_shards = plan_fit_shards(config, len(source))
        basis_shards = plan_basis_shards(config, len(source), model.num_classes)
    _clear_foreign_rows(writer, unit_shards)

    done = ledger.verified_done()
    writer.commit_files(ledger.committed_files(done))  # a resumed sweep's committed shards, in the snapshot
    # The fit data first; the fit shards next, the units' shards queued behind them (workers the fits leave idle
    # take those); the bases' targets last: they need the fits.
    phases = [fit_data, fit_shards + data_shards + unit_shards, basis_shards]
    planned = [shard for phase in phases for shard in phase]
    pending = [s for s in planned if s.id not in done]
    targets = [s for s in unit_shards + basis_shards if isinstance(s, UnitShard | ImportanceShard)]
    total_units = sum(s.size for s in targets)
    fits = f"{len(fit_data)} fit data shards, {len(fit_shards)} fit shards, " if fit_shards else ""
    print(
        f"sweep {config.fingerprint()}: {fits}{len(data_shards)} data shards, {len(unit_shards)} unit shards "
        f"{_basis_count(basis_shards)}({total_units} unit tasks); {len(planned) - len(pending)} already done"
    )

    failures, bases, workers, band_shards, quantiles = [], {}, [], [], None
    try:
        for number, phase in enumerate(phases):
            if number == len(phases) - 1 and fit_shards:
                bases = _adopt_bases(config, ledger, output, source)
                phase = basis_shards[:] = _with_readouts(basis_shards, bases)
                _clear_foreign_rows(writer, [s for s in basis_shards if isinstance(s, UnitShard)])
            waiting = [s for s in phase if s.id not in done]
            if not waiting:
                continue
            workers = workers or _start(ray_runner, address, config, model)
            failures = _run_with_progress(
                ray_runner, workers, waiting, targets, total_units, done, progress, ledger
            )
            done |= {s.id for s in waiting} - {f.shard for f in failures}
            if failures:
                break
        _raise_failures(failures)
        if data_shards and config.selectivity.quantile_k:
            quantiles, digest = ledger.fix_quantiles(
                lambda: _merged_quantiles(ledger, data_shards, layer_names)
            )
            if config.selectivity.band_phase:
                band_shards = plan_band_shards(data_shards, digest)
                band_pending = [s for s in band_shards if s.id not in done]
                print(
                    f"band phase: {len(band_shards)} shards; {len(band_shards) - len(band_pending)} already done"
                )
                if band_pending:
                    workers = workers or _start(ray_runner, address, config, model)
                    _raise_failures(
                        _run_band_phase(ray_runner, workers, band_pending, band_shards, progress, ledger)
                    )
    finally:
        for worker in workers:  # idle actors would keep autoscaled nodes alive
            ray_runner.ray.kill(worker)

    if data_shards:
        merged = _merge_partial_sums(ledger, data_shards)
        with writer.committing():  # every layer's selectivity, exemplars, quantiles and bands in one snapshot
            for name in layer_names:
                writer.write_selectivity(name, selectivity_table(merged.class_means(name), merged.n_images))
            if bases:  # each basis's directions, in their own files (selectivity@<basis>)
                sums = _merge_partial_sums(ledger, [s for s in basis_shards if isinstance(s, DataShard)])
                stacked = layer_readouts(bases)
                for name, by_layer in bases.items():
                    for layer, readout in by_layer.items():
                        part = getattr(stacked[layer], "slices", {}).get(name, slice(None))
                        rows = selectivity_table(sums.class_means(layer)[:, part], sums.n_images)
                        writer.write_selectivity(layer, with_basis(rows, readout))
            exemplars = bands = None
            if config.selectivity.exemplars:
                exemplars = merge_partial_exemplars(ledger, data_shards)
                write_exemplars(writer, exemplars, layer_names)
            if quantiles is not None:
                for name in layer_names:
                    rows = quantiles_table(quantiles["values"][name].numpy(), quantiles["k"],
                                           quantiles["rank_error"], quantiles["n_images"])  # fmt: skip
                    writer.write_table("quantiles", name, rows)
            if band_shards:
                bands = merge_partial_bands(ledger, band_shards)
                write_bands(writer, bands, layer_names)
            if exemplars is not None or bands is not None:
                cfg = config.selectivity
                indices = referenced_images(exemplars, bands)
                store_thumbnails(writer, source, indices, model, cfg.batch_size, cfg.workers, progress)
    record = _record(config, classes=classes, shards=len(planned) + len(band_shards))
    if bases:
        record["basis_hashes"] = {name: {layer: b.content_hash() for layer, b in by_layer.items()}
                                  for name, by_layer in bases.items()}  # fmt: skip
    output.complete(record)
    return run_summary(open_run(config.out))


def _start(ray_runner, address, config: SweepConfig, model) -> list:
    ray_runner.connect(address)
    return ray_runner.start_workers(config, model.num_classes)


def _raise_failures(failures) -> None:
    if failures:
        names = "\n".join(f"  {f.shard}: {f.error}" for f in failures)
        raise SweepError(
            f"{len(failures)} shard(s) failed (the others are committed; a rerun computes only "
            f"these):\n{names}"
        )


def _basis_count(basis_shards: list) -> str:
    if not basis_shards:
        return ""
    data = sum(isinstance(s, DataShard) for s in basis_shards)
    return f"+ {data} data shards of the bases, {len(basis_shards) - data} basis unit shards "


SWEEP_REMEDY = "rename the basis in the config's bases:, or sweep into another out (no row was written)"


def _adopt_bases(config: SweepConfig, ledger: ShardLedger, output, source) -> dict[str, dict]:
    """After the fit shards: each basis stored in the run as `repsub basis fit` stores it (a layer whose name the
    run already holds with this very fit is kept as it is; another fit of the name is refused before anything is
    written), its rows' scopes claimed with the fit's content hashes, and the manifest's bases recorded in the
    same write. Returns {basis: {layer: the fitted basis}}, the readouts of the target shards."""
    writer = output.writer
    manifest = writer.read_manifest() or {}
    recorded = recorded_bases(manifest)
    fitted = {spec.name: ledger.load_fitted(spec.name) for spec in config.bases}
    for name, rows in fitted.items():  # every refusal before any write
        for layer, row in rows.items():
            refuse_refit(
                manifest, layer, name, row.column("hash")[0].as_py(), replace=False, remedy=SWEEP_REMEDY
            )
    entries, bases, scopes = {}, {}, []
    with writer.committing():
        for name, rows in fitted.items():
            new = {
                layer: row for layer, row in rows.items()
                if (recorded.get(f"{layer}/{name}") or {}).get("hash") != row.column("hash")[0].as_py()
            }  # fmt: skip
            entries.update(store_bases(writer, manifest, name, new, replace=False)[0])
            bases[name] = {
                layer: Basis.from_state(row_state(row.to_pylist()[0])) for layer, row in rows.items()
            }
            scopes += _basis_scopes(config, name, bases[name], source)
    output.session.extend(scopes, update=lambda m: m.setdefault("bases", {}).update(entries))
    for name, by_layer in bases.items():
        hashes = ", ".join(f"{layer} {basis.content_hash()[:12]}" for layer, basis in by_layer.items())
        print(f"basis {name} ({config.basis(name).kind}): {hashes}")
    return bases


def _basis_scopes(config: SweepConfig, name: str, readouts: dict, source) -> list[Scope]:
    """What the sweep writes of basis `name`: its selectivity and units rows, each layer's meaning holding that
    layer's fit (its content hash: repsub.runstore.provenance.basis_layer_meanings)."""
    per_layer = basis_layer_meanings(readouts)
    directions = {
        layer: ranges_text(units_within(config.units, readout.K)) for layer, readout in readouts.items()
    }
    meaning = selectivity_meaning(source, config.selectivity_image_size())
    scopes = [
        Scope("selectivity", None, dict.fromkeys(readouts), meaning, basis=name, layer_meanings=per_layer)
    ]
    return scopes + [
        Scope(
            "units",
            method,
            directions,
            units_meaning(config.optimization),
            basis=name,
            layer_meanings=per_layer,
        )
        for method in config.methods
    ]


def layer_readouts(bases: dict[str, dict]) -> dict:
    """{layer: what its bases' data shards read out}: the one basis of a layer, or its bases stacked
    (repsub.core.readout.StackedReadout; LayerCapture reduces each part alone, so each basis's numbers are those
    of a pass through it alone)."""
    found: dict[str, list] = {}
    for by_layer in bases.values():
        for layer, basis in by_layer.items():
            found.setdefault(layer, []).append(basis)
    return {layer: parts[0] if len(parts) == 1 else StackedReadout(parts) for layer, parts in found.items()}


def _with_readouts(shards: list, bases: dict[str, dict]) -> list:
    """The basis target shards carrying their fitted bases (what the workers read out)."""
    stacked = layer_readouts(bases)
    return [
        replace(shard, readouts=stacked)
        if isinstance(shard, DataShard)
        else replace(shard, readout=bases[shard.basis][shard.layer])
        for shard in shards
    ]


def _check_importance_data(config: SweepConfig, model):
    """Before any work: the importance data opens and its classes are the model's (it measures accuracy)."""
    source = open_source(
        config.importance.data, config.importance_image_size(), model.mean, model.std, model.resize_ratio
    )
    if len(source.classes) != model.num_classes:
        raise UsageError(
            f"importance.data {config.importance.data}: {len(source.classes)} classes, the model's classifier "
            f"{model.num_classes}: importance measures accuracy, so the classes must be the model's"
        )
    return source


def _clear_foreign_rows(writer: RunWriter, shards: list[UnitShard | ImportanceShard]) -> None:
    """Remove rows of the planned units left by other commands (e.g. an earlier `visualize`), keeping this
    plan's own shard files (a resumed sweep keeps what it committed). Done once, before any worker writes."""
    by_partition: dict[tuple[str, str, str], tuple[set[int], set[str]]] = {}
    for shard in shards:
        table, key = (
            ("importance", shard.ablation)
            if isinstance(shard, ImportanceShard)
            else ("units", file_key(shard.method, shard.basis))
        )
        units, names = by_partition.setdefault((table, key, shard.layer), (set(), set()))
        units.update(shard.indices)
        names.add(TABLES[table].block_name(key, list(shard.indices)))
    with writer.committing():  # rewritten under new names, the old files retired: one snapshot
        for (table, key, layer), (units, names) in by_partition.items():
            writer.drop_rows(table, key, layer, units, keep_files=names)


def merge_partials(load, shards: list, what: str):
    """The shards' partial states (`load(shard id)`: accumulators with `merge` and `n_images`) merged in shard
    order (each merge is exact, or for sketches within their rank error, in any order), checked to cover the
    dataset's images."""
    merged = load(shards[0].id)
    for shard in shards[1:]:
        merged.merge(load(shard.id))
    if merged.n_images != shards[-1].stop:
        raise SweepError(f"the shards' {what} cover {merged.n_images} images, the dataset {shards[-1].stop}")
    return merged


def _merge_partial_sums(ledger: ShardLedger, shards: list[DataShard]) -> ClassMeanAccumulator:
    return merge_partials(ledger.load_partial_sums, shards, "class sums")


def merge_partial_exemplars(ledger: ShardLedger, shards: list[DataShard]) -> ExemplarAccumulator:
    return merge_partials(ledger.load_partial_exemplars, shards, "exemplars")


def merge_partial_sketches(ledger: ShardLedger, shards: list[DataShard]) -> QuantileSketches:
    return merge_partials(ledger.load_partial_sketches, shards, "quantile sketches")


def merge_partial_bands(ledger: ShardLedger, shards: list[BandShard]) -> BandAccumulator:
    return merge_partials(ledger.load_partial_bands, shards, "bands")


def _merged_quantiles(ledger: ShardLedger, shards: list[DataShard], layer_names: list[str]) -> dict:
    """The state ShardLedger.fix_quantiles stores: every layer's values at STORED_RANKS and how they were made."""
    merged = merge_partial_sketches(ledger, shards)
    values = {name: torch.from_numpy(merged.quantiles(name, STORED_RANKS)) for name in layer_names}
    return {"ranks": list(STORED_RANKS), "k": merged.k, "rank_error": merged.rank_error,
            "n_images": merged.n_images, "values": values}  # fmt: skip


def _run_band_phase(ray_runner, workers, pending, band_shards, progress, ledger):
    """The band shards on the workers, a progress bar of their images."""
    images = sum(s.size for s in band_shards)
    started = time.monotonic()
    with tqdm(total=images, initial=images - sum(s.size for s in pending), unit="img", desc="band pass",
              disable=not progress) as bar:  # fmt: skip
        failures = ray_runner.run_shards(workers, pending, lambda shard, _result: bar.update(shard.size))
    print(f"ran {len(pending)} band shards in {time.monotonic() - started:.1f} s")
    return failures


def _run_with_progress(ray_runner, workers, pending, unit_shards, total_units, done, progress, ledger):
    units_done = sum(s.size for s in unit_shards if s.id in done)  # unit_shards: those of units and bases
    shards_total = len(pending) + len(done)
    state = {"shards": len(done)}
    started = time.monotonic()
    with tqdm(
        total=total_units, initial=units_done, unit="unit", desc="sweep", disable=not progress, smoothing=0.1
    ) as bar:
        bar.set_postfix_str(f"shards {state['shards']}/{shards_total}")

        def on_done(shard, _result):
            ledger.writer.commit_files(ledger.committed_files([shard.id]))  # readers see it from now on
            state["shards"] += 1
            if isinstance(shard, UnitShard | ImportanceShard):
                bar.update(shard.size)
            bar.set_postfix_str(f"shards {state['shards']}/{shards_total}")

        failures = ray_runner.run_shards(workers, pending, on_done)
    print(f"ran {len(pending)} shards in {time.monotonic() - started:.1f} s")
    return failures
