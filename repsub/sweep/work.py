"""What one shard does, with no knowledge of Ray: compute, then commit through the ledger.

Used by the Ray actors and, unchanged, by a plain in-process loop.
"""

from __future__ import annotations

import time

from ..api import units_table
from ..data.sources import open_source
from ..models import LoadedModel, resolve_model
from ..optimize import optimize_units
from ..precision import resolve_device, resolve_precision
from ..selectivity_pass import accumulate_class_sums
from ..storage import configure_s3
from ..store import RunWriter
from .commit import ShardLedger
from .config import SweepConfig
from .plan import DataShard, UnitShard


class ShardRunner:
    """Holds one loaded model and runs shards with it; one per worker process."""

    def __init__(self, config: SweepConfig, num_classes: int | None = None):
        self.config = config
        configure_s3(config.storage.endpoint_url, config.storage.region)  # this is another process
        self.device = resolve_device(config.device)
        self.model: LoadedModel = resolve_model(
            config.model, config.weights, seed=config.seed, device=self.device, num_classes=num_classes
        )
        self.writer = RunWriter(config.out)
        self.ledger = ShardLedger(self.writer, config.fingerprint())
        self._source = None

    def selectivity_image_size(self) -> int:
        return self.config.selectivity.image_size or self.config.optimization.image_size

    def source(self):
        if self._source is None:
            self._source = open_source(
                self.config.selectivity.data,
                self.selectivity_image_size(),
                self.model.mean,
                self.model.std,
                self.model.resize_ratio,
            )
        return self._source

    def run_unit_shard(self, shard: UnitShard) -> dict:
        started = time.monotonic()
        layer = self.model.layer(shard.layer)
        result = optimize_units(
            self.model,
            layer,
            list(shard.units),
            shard.method,
            self.config.optimization,
            run_seed=self.config.seed,
            device=self.device,
            progress=False,
            reduce=self.config.reduce,
        )
        table = units_table(shard.method, result, self.config.optimization.steps)
        path = self.writer.write_units(shard.method, shard.layer, table, replace_existing=False)
        info = {
            "rows": table.num_rows,
            "file": path.rsplit("/", 1)[-1],
            "seconds": time.monotonic() - started,
            "device": self.device,
            "precision": resolve_precision(self.config.optimization.precision, self.device).used,
        }
        self.ledger.mark_done(shard.id, info)
        return {"shard": shard.id, **info}

    def run_data_shard(self, shard: DataShard) -> dict:
        started = time.monotonic()
        cfg = self.config.selectivity
        source = self.source()
        layers = [self.model.layer(name) for name in self.config.layer_names(self.model.layers)]
        batches = source.batches(
            cfg.batch_size, indices=range(shard.start, shard.stop), workers=cfg.workers, device=self.device
        )
        acc = accumulate_class_sums(
            self.model,
            layers,
            batches,
            len(source.classes),
            reduce=self.config.reduce,
            device=self.device,
            progress=False,
            precision=resolve_precision(cfg.precision, self.device),
        )
        if acc.n_images != shard.size:
            raise RuntimeError(f"{shard.id}: saw {acc.n_images} images, expected {shard.size}")
        self.ledger.save_partial_sums(shard.id, acc)
        info = {
            "images": acc.n_images,
            "seconds": time.monotonic() - started,
            "device": self.device,
            "precision": resolve_precision(cfg.precision, self.device).used,
        }
        self.ledger.mark_done(shard.id, info)
        return {"shard": shard.id, **info}
