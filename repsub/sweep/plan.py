"""Planning: a config becomes a deterministic list of shards.

A data shard is an index range of the dataset (its partial per-class sums merge exactly); a band shard
the same range again, once the data shards' quantiles are merged (its bands, given those edges, merge
exactly; its id names the edges' digest, so that bands of other edges are never merged with them); a
unit shard is one method, one layer and a block of units; an importance shard one layer and a block
of units, ablated over the importance images. Shard ids depend only on the config, so the same config
always yields the same shards, and a rerun finds the ones already done.

A sweep with `bases:` plans fit shards first: fit data shards (an index range: each basis's sampled vectors and
pca's exact sums), then one fit shard per basis (the gathered vectors fitted, on one worker). Its target shards
follow: data shards for all bases at once (`data@<basis>+<basis>-...`: every basis's directions' class sums in
one pass) and unit shards over each basis's directions (`am@<basis>-<layer>-...`), which carry the fitted
bases (`readouts`, `readout`) once the driver has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repsub.models import catalog_of
from repsub.runstore.tables import UNIT_BASIS, file_key
from repsub.selection import units_within
from repsub.sweep.config import SweepConfig


@dataclass(frozen=True)
class DataShard:
    start: int
    stop: int  # exclusive
    basis: str = UNIT_BASIS  # another basis: its directions' class sums, through `readouts`
    readouts: dict | None = field(default=None, compare=False, repr=False)  # {layer: the fitted basis}

    @property
    def id(self) -> str:
        return f"{file_key('data', self.basis)}-{self.start:08d}-{self.stop:08d}"

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
    indices: tuple[int, ...]  # units, or a basis's directions
    basis: str = UNIT_BASIS
    readout: object = field(default=None, compare=False, repr=False)  # the fitted basis (None: units)

    @property
    def id(self) -> str:
        return (
            f"{file_key(self.method, self.basis)}-{self.layer}-{self.indices[0]:05d}-{self.indices[-1]:05d}"
        )

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


@dataclass(frozen=True)
class FitDataShard:
    """An index range of the data: the vectors every basis samples there (and pca's exact sums of them)."""

    start: int
    stop: int

    @property
    def id(self) -> str:
        return f"fit-data-{self.start:08d}-{self.stop:08d}"

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class FitShard:
    """One basis fitted on every layer it names, from the fit data shards' vectors."""

    basis: str
    data_shards: tuple[str, ...]  # the ids of the fit data shards it gathers, in data order

    @property
    def id(self) -> str:
        return f"fit-{self.basis}"

    @property
    def size(self) -> int:
        return 0


def plan_data_shards(n_images: int, images_per_shard: int, basis: str = UNIT_BASIS) -> list[DataShard]:
    return [
        DataShard(start, min(start + images_per_shard, n_images), basis)
        for start in range(0, n_images, images_per_shard)
    ]


def plan_fit_shards(config: SweepConfig, n_images: int) -> tuple[list[FitDataShard], list[FitShard]]:
    """The fit data shards (the selectivity pass's ranges) and one fit shard per basis; none without bases."""
    if not config.bases:
        return [], []
    ranges = plan_data_shards(n_images, config.selectivity.images_per_shard)
    data = [FitDataShard(shard.start, shard.stop) for shard in ranges]
    ids = tuple(shard.id for shard in data)
    return data, [FitShard(spec.name, ids) for spec in config.bases]


def basis_sizes(config: SweepConfig, num_classes: int | None = None) -> dict[str, dict[str, int]]:
    """{basis: {layer: K}}: each basis's directions on each of its layers, as its config fixes them."""
    from repsub.core.bases.fit import default_size

    layers = {
        layer.name: layer
        for layer in catalog_of(config.model, num_classes, config.weights).select(config.layers)
    }
    return {
        spec.name: {
            name: spec.size or default_size(spec.kind, layers[name].n_units, spec.expansion)
            for name in spec.layers
        }
        for spec in config.bases
    }


def stacked_name(config: SweepConfig) -> str:
    """The name of all the bases' data shards: their names joined by '+' (as repsub.core.readout.StackedReadout
    joins them; no basis name holds a '+')."""
    return "+".join(spec.name for spec in config.bases)


def plan_basis_shards(config: SweepConfig, n_images: int, num_classes: int | None = None) -> list:
    """The target shards of the bases: their data shards (one pass for all), then each basis's directions in
    blocks per method and layer (`units` selects directions as it selects units)."""
    if not config.bases:
        return []
    shards: list = plan_data_shards(n_images, config.selectivity.images_per_shard, stacked_name(config))
    per_shard = config.sharding.units_per_shard
    sizes = basis_sizes(config, num_classes)
    for spec in config.bases:
        for method in config.methods:
            for layer in spec.layers:
                directions = units_within(config.units, sizes[spec.name][layer])
                for start in range(0, len(directions), per_shard):
                    block = tuple(directions[start : start + per_shard])
                    shards.append(UnitShard(method, layer, block, spec.name))
    return shards


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
