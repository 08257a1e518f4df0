"""The sweep driver: plan, skip what is done, run the rest on Ray, merge, write the manifest last."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from repsub.analysis.run import open_run
from repsub.analysis.summary import run_summary
from repsub.commands.context import CommandContext
from repsub.commands.selectivity import referenced_images, store_thumbnails
from repsub.core.bands import BandAccumulator
from repsub.core.exemplars import ExemplarAccumulator
from repsub.core.quantiles import QuantileSketches
from repsub.core.selectivity import ClassMeanAccumulator
from repsub.data.sources import open_source
from repsub.data.subset import balanced_subset
from repsub.errors import RepsubError, UsageError
from repsub.models import resolve_model
from repsub.runstore.exemplars import write_bands, write_exemplars
from repsub.runstore.provenance import Scope, importance_meaning, selectivity_meaning, units_meaning
from repsub.runstore.storage import configure_s3
from repsub.runstore.tables import STORED_RANKS, TABLES, quantiles_table, selectivity_table
from repsub.runstore.writer import RunWriter
from repsub.selection import ranges_text, units_within
from repsub.sweep.address import check_address
from repsub.sweep.commit import ShardLedger
from repsub.sweep.config import SweepConfig
from repsub.sweep.plan import (
    BandShard,
    DataShard,
    ImportanceShard,
    UnitShard,
    plan_band_shards,
    plan_data_shards,
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
    classes: list[str] = []
    if source is not None:
        classes = source.classes
        data_shards = plan_data_shards(len(source), config.selectivity.images_per_shard)
    _clear_foreign_rows(writer, unit_shards)

    done = ledger.verified_done()
    writer.commit_files(ledger.committed_files(done))  # a resumed sweep's committed shards, in the snapshot
    pending = [s for s in data_shards + unit_shards if s.id not in done]
    total_units = sum(s.size for s in unit_shards)
    print(
        f"sweep {config.fingerprint()}: {len(data_shards)} data shards, {len(unit_shards)} unit shards "
        f"({total_units} unit tasks); {len(data_shards) + len(unit_shards) - len(pending)} already done"
    )

    failures, workers, band_shards = [], [], []
    try:
        if pending:
            workers = _start(ray_runner, address, config, model)
            failures = _run_with_progress(
                ray_runner, workers, pending, unit_shards, total_units, done, progress, ledger
            )
        _raise_failures(failures)
        quantiles = None
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
    shards = len(data_shards) + len(band_shards) + len(unit_shards)
    output.complete(_record(config, classes=classes, shards=shards))
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
            ("importance", shard.ablation) if isinstance(shard, ImportanceShard) else ("units", shard.method)
        )
        units, names = by_partition.setdefault((table, key, shard.layer), (set(), set()))
        units.update(shard.indices)
        names.add(TABLES[table].block_name(key, list(shard.indices)))
    with writer.committing():  # rewritten under new names, the old files retired: one snapshot
        for (table, key, layer), (units, names) in by_partition.items():
            writer.drop_rows(table, key, layer, units, keep_files=names)


def _merge_partial_sums(ledger: ShardLedger, shards: list[DataShard]) -> ClassMeanAccumulator:
    merged = ledger.load_partial_sums(shards[0].id)
    for shard in shards[1:]:
        merged.merge(ledger.load_partial_sums(shard.id))
    expected = shards[-1].stop
    if merged.n_images != expected:
        raise SweepError(f"the data shards hold {merged.n_images} images, the dataset {expected}")
    return merged


def merge_partial_exemplars(ledger: ShardLedger, shards: list[DataShard]) -> ExemplarAccumulator:
    """The data shards' exemplars merged in shard order (the merge is exact in any order)."""
    merged = ledger.load_partial_exemplars(shards[0].id)
    for shard in shards[1:]:
        merged.merge(ledger.load_partial_exemplars(shard.id))
    if merged.n_images != shards[-1].stop:
        raise SweepError(
            f"the data shards' exemplars cover {merged.n_images} images, the dataset {shards[-1].stop}"
        )
    return merged


def merge_partial_sketches(ledger: ShardLedger, shards: list[DataShard]) -> QuantileSketches:
    """The data shards' quantile sketches merged (KLL: within the rank error in any order)."""
    merged = ledger.load_partial_sketches(shards[0].id)
    for shard in shards[1:]:
        merged.merge(ledger.load_partial_sketches(shard.id))
    if merged.n_images != shards[-1].stop:
        raise SweepError(
            f"the data shards' sketches cover {merged.n_images} images, the dataset {shards[-1].stop}"
        )
    return merged


def _merged_quantiles(ledger: ShardLedger, shards: list[DataShard], layer_names: list[str]) -> dict:
    """The state ShardLedger.fix_quantiles stores: every layer's values at STORED_RANKS and how they were made."""
    merged = merge_partial_sketches(ledger, shards)
    values = {name: torch.from_numpy(merged.quantiles(name, STORED_RANKS)) for name in layer_names}
    return {"ranks": list(STORED_RANKS), "k": merged.k, "rank_error": merged.rank_error,
            "n_images": merged.n_images, "values": values}  # fmt: skip


def merge_partial_bands(ledger: ShardLedger, shards: list[BandShard]) -> BandAccumulator:
    """The band shards' bands merged in shard order (exact in any order, given the same edges)."""
    merged = ledger.load_partial_bands(shards[0].id)
    for shard in shards[1:]:
        merged.merge(ledger.load_partial_bands(shard.id))
    if merged.n_images != shards[-1].stop:
        raise SweepError(f"the band shards cover {merged.n_images} images, the dataset {shards[-1].stop}")
    return merged


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
    units_done = sum(s.size for s in unit_shards if s.id in done)
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
            if not isinstance(shard, DataShard):
                bar.update(shard.size)
            bar.set_postfix_str(f"shards {state['shards']}/{shards_total}")

        failures = ray_runner.run_shards(workers, pending, on_done)
    print(f"ran {len(pending)} shards in {time.monotonic() - started:.1f} s")
    return failures
