"""What one shard does, with no knowledge of Ray: compute, then commit through the ledger.

Used by the Ray actors and, unchanged, by a plain in-process loop.
"""

from __future__ import annotations

import time

import torch

from repsub.ablation import measure_importance, unit_means
from repsub.capture.positions import Sample, sample_vectors
from repsub.capture.precision import resolve_device, resolve_precision
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.commands.basis import fit_fields, fit_layer_basis, fit_options
from repsub.commands.selectivity import each_batch
from repsub.core.bands import BandAccumulator
from repsub.core.bases.pca import PcaSums
from repsub.core.exemplars import ExemplarAccumulator
from repsub.core.quantiles import QuantileSketches
from repsub.data.sources import open_source
from repsub.data.subset import balanced_subset
from repsub.errors import RunError
from repsub.models import LoadedModel, resolve_model
from repsub.optimize import optimize_units
from repsub.runstore.storage import configure_s3
from repsub.runstore.tables import band_edges, importance_table, units_table, with_basis
from repsub.runstore.writer import RunWriter
from repsub.sweep.commit import ShardLedger
from repsub.sweep.config import SweepConfig
from repsub.sweep.plan import BandShard, DataShard, FitDataShard, FitShard, ImportanceShard, UnitShard


class ShardRunner:
    """Holds one loaded model and runs shards with it; one per worker process."""

    def __init__(self, config: SweepConfig, num_classes: int | None = None):
        self.config = config
        configure_s3(config.storage.endpoint_url, config.storage.region)  # this is another process
        self.device = resolve_device(config.device)
        self.model: LoadedModel = resolve_model(
            config.model, config.weights, seed=config.seed, device=self.device, num_classes=num_classes
        )
        self.writer = RunWriter(config.out, shard=True)  # deterministic names; the driver publishes them
        self.ledger = ShardLedger(self.writer, config.fingerprint())
        self._sources: dict[tuple[str, int], object] = {}
        self._importance_means: dict[str, object] = {}  # layer -> its units' means (mean ablation)
        self._edges: tuple[str, dict] | None = None  # (digest, {layer: band edges}) of the merged quantiles

    def source(self, data: str, image_size: int):
        """A data source, opened once per worker (FFCV compiles its pipeline per Loader, not per source)."""
        key = (data, image_size)
        if key not in self._sources:
            model = self.model
            self._sources[key] = open_source(data, image_size, model.mean, model.std, model.resize_ratio)
        return self._sources[key]

    def run_unit_shard(self, shard: UnitShard) -> dict:
        started = time.monotonic()
        layer = self.model.layer(shard.layer)
        result = optimize_units(
            self.model,
            layer,
            list(shard.indices),
            shard.method,
            self.config.optimization,
            run_seed=self.config.seed,
            device=self.device,
            progress=False,
            reduce=self.config.reduce,
            readout=shard.readout,
        )
        table = with_basis(units_table(shard.method, result), shard.readout)
        path = self.writer.write_units(
            shard.method, shard.layer, table, replace_existing=False, command="sweep"
        )
        info = {
            "rows": table.num_rows,
            "file": path.rsplit("/", 1)[-1],
            "seconds": time.monotonic() - started,
            "device": self.device,
            "precision": resolve_precision(self.config.optimization.precision, self.device).used,
        }
        self.ledger.mark_done(shard.id, info, [path])
        return {"shard": shard.id, **info}

    def run_data_shard(self, shard: DataShard) -> dict:
        started = time.monotonic()
        cfg = self.config.selectivity
        source = self.source(cfg.data, self.config.selectivity_image_size())
        names = list(shard.readouts or {}) or self.config.layer_names(self.model.layers)
        layers = [self.model.layer(name) for name in names]
        precision = resolve_precision(cfg.precision, self.device)
        batches = source.batches(
            cfg.batch_size, indices=range(shard.start, shard.stop), workers=cfg.workers, device=self.device
        )
        units = {layer.name: layer.n_units for layer in layers}
        exemplars = sketches = None
        # Exemplars and quantiles are the units': none in a basis's shard. Image indices count from the shard's
        # first image: they are the dataset's.
        if cfg.exemplars and shard.readouts is None:
            exemplars = ExemplarAccumulator(units, cfg.exemplars, first_index=shard.start, device=self.device)
        if cfg.quantile_k and shard.readouts is None:
            sketches = QuantileSketches(units, cfg.quantile_k)
        acc = accumulate_class_sums(
            self.model,
            layers,
            batches,
            len(source.classes),
            reduce=self.config.reduce,
            device=self.device,
            progress=False,
            on_batch=each_batch(exemplars.add if exemplars else None, sketches.add if sketches else None),
            precision=precision,
            readouts=shard.readouts,  # a basis's shard: its directions' class sums
        )
        if acc.n_images != shard.size:
            raise RuntimeError(f"{shard.id}: saw {acc.n_images} images, expected {shard.size}")
        paths = [self.ledger.save_partial_sums(shard.id, acc)]
        if exemplars is not None:
            paths.append(self.ledger.save_partial_exemplars(shard.id, exemplars))
        if sketches is not None:
            paths.append(self.ledger.save_partial_sketches(shard.id, sketches))
        info = {
            "images": acc.n_images,
            "seconds": time.monotonic() - started,
            "device": self.device,
            "precision": precision.used,
        }
        self.ledger.mark_done(shard.id, info, paths)
        return {"shard": shard.id, **info}

    def run_fit_data_shard(self, shard: FitDataShard) -> dict:
        """Sample every basis's vectors from the shard's images (each image's own seeded draw: the shards
        together sample what one pass samples) and sum pca's; saved under `_sweep/`."""
        started = time.monotonic()
        cfg = self.config.selectivity
        source = self.source(cfg.data, self.config.selectivity_image_size())
        indices = list(range(shard.start, shard.stop))
        state: dict = {"samples": {}, "pca": {}}
        for positions, layer_names in sampled_layers(self.config).items():
            layers = [self.model.layer(name) for name in layer_names]
            batches = source.batches(cfg.batch_size, indices=indices, workers=cfg.workers, device=self.device)
            samples = sample_vectors(
                self.model, layers, batches, indices, positions, self.config.seed, self.device
            )
            for name, sample in samples.items():
                key = sample_key(name, positions)
                state["samples"][key] = {"fit": sample.fit, "held_out": sample.held_out,
                                         "n_images": sample.n_images, "n_positions": sample.n_positions}  # fmt: skip
                if key in pca_keys(self.config):
                    state["pca"][key] = PcaSums(sample.fit.shape[1]).add(sample.fit).state_dict()
        path = self.ledger.save_fit_samples(shard.id, state)
        info = {"images": len(indices), "seconds": time.monotonic() - started, "device": self.device}
        self.ledger.mark_done(shard.id, info, [path])
        return {"shard": shard.id, **info}

    def run_fit_shard(self, shard: FitShard) -> dict:
        """Fit one basis on each of its layers from the fit data shards' vectors, gathered in data order (pca from
        their sums, merged exactly), on this worker's device; its rows saved under `_sweep/`."""
        started = time.monotonic()
        spec = self.config.basis(shard.basis)
        parts = [self.ledger.load_fit_samples(shard_id) for shard_id in shard.data_shards]
        cfg = self.config.selectivity
        size_px = self.config.selectivity_image_size()
        source = self.source(cfg.data, size_px)
        n_images = sum(
            part["samples"][sample_key(spec.layers[0], spec.positions)]["n_images"] for part in parts
        )
        fit = fit_fields(source, size_px, spec.positions, self.config.seed, None, n_images)
        options = fit_options(spec.top_k, spec.expansion, sae_epochs=spec.sae_epochs, device=self.device)
        rows = {}
        for layer in spec.layers:
            key = sample_key(layer, spec.positions)
            pieces = [part["samples"][key] for part in parts]
            sample = Sample(
                torch.cat([piece["fit"] for piece in pieces]),
                torch.cat([piece["held_out"] for piece in pieces]),
                n_images,
                pieces[0]["n_positions"],
            )
            sums = None
            if spec.kind == "pca":
                sums = PcaSums.from_state_dict(parts[0]["pca"][key])
                for part in parts[1:]:
                    sums.merge(PcaSums.from_state_dict(part["pca"][key]))
            rows[layer] = fit_layer_basis(
                spec.kind, spec.name, layer, sample, spec.size, self.config.seed, options, spec.stability,
                self.model.identity(), fit, f"selectivity.data {cfg.data}", sums=sums,
            )  # fmt: skip
        path = self.ledger.save_fitted(spec.name, rows)
        hashes = {layer: row.column("hash")[0].as_py() for layer, row in rows.items()}
        info = {"hashes": hashes, "seconds": time.monotonic() - started, "device": self.device}
        self.ledger.mark_done(shard.id, info, [path])
        return {"shard": shard.id, **info}

    def band_edges(self, digest: str) -> dict:
        """{layer: band edges} of the plan's merged quantiles, read once per worker; they must be those of
        `digest` (the band shard's), else the shard was planned with other quantiles."""
        if self._edges is None or self._edges[0] != digest:
            state, found = self.ledger.merged_quantiles()
            if found != digest:
                raise RunError(
                    f"{self.writer.uri}: the merged quantiles changed (digest {found}, the band shard's {digest}); "
                    "rerun the sweep"
                )
            edges = {
                name: band_edges(values.numpy(), state["ranks"]) for name, values in state["values"].items()
            }
            self._edges = (digest, edges)
        return self._edges[1]

    def run_band_shard(self, shard: BandShard) -> dict:
        """The band pass over the shard's images, with the edges of the merged quantiles: its partial bands."""
        started = time.monotonic()
        cfg = self.config.selectivity
        source = self.source(cfg.data, self.config.selectivity_image_size())
        layers = [self.model.layer(name) for name in self.config.layer_names(self.model.layers)]
        precision = resolve_precision(cfg.precision, self.device)  # the data shards' (the quantiles')
        bands = BandAccumulator(self.band_edges(shard.edges), len(source.classes), cfg.band_sample,
                                self.config.seed, device=self.device, first_index=shard.start)  # fmt: skip
        acc = accumulate_class_sums(
            self.model,
            layers,
            source.batches(
                cfg.batch_size,
                indices=range(shard.start, shard.stop),
                workers=cfg.workers,
                device=self.device,
            ),  # fmt: skip
            len(source.classes),
            reduce=self.config.reduce,
            device=self.device,
            progress=False,
            on_batch=bands.add,
            precision=precision,
        )
        if acc.n_images != shard.size:
            raise RuntimeError(f"{shard.id}: saw {acc.n_images} images, expected {shard.size}")
        path = self.ledger.save_partial_bands(shard.id, bands)
        info = {"images": acc.n_images, "seconds": time.monotonic() - started, "device": self.device}
        self.ledger.mark_done(shard.id, info, [path])
        return {"shard": shard.id, **info}

    def run_importance_shard(self, shard: ImportanceShard) -> dict:
        started = time.monotonic()
        cfg = self.config.importance
        source = self.source(cfg.data, self.config.importance_image_size())
        subset = balanced_subset(source.labels(), cfg.images, self.config.seed)
        layer = self.model.layer(shard.layer)

        def batches():
            return source.batches(cfg.batch_size, indices=subset, workers=cfg.workers, device=self.device)

        means = None
        if shard.ablation == "mean":
            if shard.layer not in self._importance_means:
                self._importance_means[shard.layer] = unit_means(self.model, layer, batches(), self.device)
            means = self._importance_means[shard.layer]
        counts = measure_importance(
            self.model, layer, list(shard.indices), batches(), self.model.num_classes, shard.ablation, means,
            device=self.device, progress=False,
        )  # fmt: skip
        table = importance_table(counts.results(), shard.ablation, command="sweep")
        path = self.writer.write_table("importance", shard.layer, table, replace_existing=False)
        info = {
            "rows": table.num_rows,
            "images": counts.n_images,
            "file": path.rsplit("/", 1)[-1],
            "seconds": time.monotonic() - started,
            "device": self.device,
        }
        self.ledger.mark_done(shard.id, info, [path])
        return {"shard": shard.id, **info}


def sample_key(layer: str, positions: int) -> str:
    return f"{layer}@{positions}"


def sampled_layers(config: SweepConfig) -> dict[int, list[str]]:
    """{positions per image: the layers sampled so}: bases that sample alike share one set of vectors."""
    found: dict[int, list[str]] = {}
    for spec in config.bases:
        chosen = found.setdefault(spec.positions, [])
        chosen += [layer for layer in spec.layers if layer not in chosen]
    return found


def pca_keys(config: SweepConfig) -> set[str]:
    """The sampled vectors some pca basis is fitted on: their exact sums are kept."""
    return {
        sample_key(layer, spec.positions)
        for spec in config.bases
        if spec.kind == "pca"
        for layer in spec.layers
    }
