"""Planning: a config becomes a deterministic list of shards.

A data shard is an index range of the dataset (its partial per-class sums merge exactly); a band shard
the same range again, once the data shards' quantiles are merged (its bands, given those edges, merge
exactly; its id names the edges' digest, so that bands of other edges are never merged with them); a
unit shard is one method, one layer and a block of units; an importance shard one layer and a block
of units, ablated over the importance images. Shard ids depend only on the config, so the same config
always yields the same shards, and a rerun finds the ones already done.
"""

from __future__ import annotations

from dataclasses import dataclass

from repsub.models import catalog_of
from repsub.selection import units_within
from repsub.sweep.config import SweepConfig


@dataclass(frozen=True)
class DataShard:
    start: int
    stop: int  # exclusive

    @property
    def id(self) -> str:
        return f"data-{self.start:08d}-{self.stop:08d}"

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class BandShard:
    start: int
    stop: int  # exclusive
    edges: str  # the digest of the merged quantiles its band edges are taken from (ShardLedger.fix_quantiles)

    @property
    def id(self) -> str:
        return f"bands-{self.edges}-{self.start:08d}-{self.stop:08d}"

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class UnitShard:
    method: str
    layer: str
    indices: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"{self.method}-{self.layer}-{self.indices[0]:05d}-{self.indices[-1]:05d}"

    @property
    def size(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class ImportanceShard:
    ablation: str
    layer: str
    indices: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"importance-{self.ablation}-{self.layer}-{self.indices[0]:05d}-{self.indices[-1]:05d}"

    @property
    def size(self) -> int:
        return len(self.indices)


def plan_data_shards(n_images: int, images_per_shard: int) -> list[DataShard]:
    return [
        DataShard(start, min(start + images_per_shard, n_images))
        for start in range(0, n_images, images_per_shard)
    ]


def plan_band_shards(data_shards: list[DataShard], edges: str) -> list[BandShard]:
    """The band phase: the data shards' image ranges, with the merged quantiles of digest `edges`."""
    return [BandShard(shard.start, shard.stop, edges) for shard in data_shards]


def _blocks(config: SweepConfig, num_classes: int | None):
    """(layer name, block of units) of the config, layer by layer in model order."""
    layers = catalog_of(config.model, num_classes, config.weights).select(config.layers)
    per_shard = config.sharding.units_per_shard
    for layer in layers:
        units = units_within(config.units, layer.n_units)
        for start in range(0, len(units), per_shard):
            yield layer.name, tuple(units[start : start + per_shard])


def plan_unit_shards(config: SweepConfig, num_classes: int | None = None) -> list[UnitShard]:
    """Every (method, layer, block of units) of the config."""
    return [
        UnitShard(method, layer, units)
        for method in config.methods
        for layer, units in _blocks(config, num_classes)
    ]


def plan_importance_shards(config: SweepConfig, num_classes: int | None = None) -> list[ImportanceShard]:
    """Every (layer, block of units) of the config, when it has an importance section."""
    if not config.importance.data:
        return []
    ablation = config.importance.ablation
    return [ImportanceShard(ablation, layer, units) for layer, units in _blocks(config, num_classes)]
