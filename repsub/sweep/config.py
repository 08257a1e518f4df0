"""The sweep configuration: one YAML file naming the model, data, layers, methods, settings and output.

Validated strictly: an unknown key is an error that lists the valid keys, a bad value names the key.

    model: vgg16                 # shallow_cnn | mlp | a torchvision classification model (layers --list-models)
    weights: imagenet            # random | imagenet | DEFAULT | a torchvision weights name | a state_dict path
    seed: 0
    out: s3://bucket/runs/vgg16  # or a local directory
    layers: all                  # or a list of layer names: catalog names or any module name of the model
    methods: [am, iam]
    units: null                  # e.g. "0-63": these units of every layer, where it has them (default: all)
    device: auto                 # auto | cpu | cuda
    reduce: mean                 # a conv unit's spatial reduction (selectivity, objectives, RS): mean | max | center
    optimization: {steps: 256, lr: 0.05, image_size: 224, param: fourier, batch_size: 64,
                   own_term: hybrid, rescue_rounds: 3, precision: auto}  # any of repsub.optimize.settings
    selectivity:  {data: /data/imagenet_val.beton, image_size: 224, batch_size: 256, precision: auto,
                   workers: 8, images_per_shard: 5000, exemplars: 16, quantile_k: 200, bands: null,
                   band_sample: 16}
    importance:   {data: /data/imagenet_val.beton, images: 10000, ablation: zero, batch_size: 256, workers: 8}
    sharding:     {units_per_shard: 64}  # units per AM/IAM and importance shard
    workers:      {count: 8, gpus: 1, cpus: 4}
    storage:      {endpoint_url: null, region: null}   # S3-compatible endpoint; credentials never here
    allow_mixed: false           # accept rows of another meaning beside the run's (README, "Run integrity")
    bases:                       # fitted on selectivity.data before the targets (README, "Bases in a sweep")
      - {name: pca, kind: pca, size: 64, layers: [conv5_3]}       # + positions, stability
      - {name: sae, kind: sae, layers: [fc7], expansion: 4, top_k: 64, sae_epochs: 20}

`selectivity.data` is a .beton file (local or s3://), an ImageFolder directory, or `demo`: the demo's
generated held-out images, made on first use in each worker machine's cache, identically. Relative paths
are read from the driver's current directory (local Ray workers share it; on a cluster, use s3:// or paths
every node has).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from repsub.capture.precision import PRECISIONS
from repsub.capture.reader import REDUCTIONS
from repsub.core.bases.kinds import FITTED_KINDS, FROM_A_FILE
from repsub.errors import UsageError, cut, shown
from repsub.optimize import METHODS
from repsub.optimize.settings import OptimSettings
from repsub.validate import check_int

if TYPE_CHECKING:
    from repsub.models import LoadedModel


@dataclass(frozen=True)
class SelectivityConfig:
    data: str | None = None  # None: no selectivity pass
    image_size: int | None = None  # None: the optimization's image size
    batch_size: int = 64
    precision: str = "auto"  # of the forward: auto | fp32 | bf16 (class sums are float64 always)
    workers: int = 2  # data-loading processes per actor
    images_per_shard: int = 5000
    exemplars: int = 16  # every unit's k top and k bottom images (repsub.core.exemplars); 0: none
    quantile_k: int = 200  # every unit's KLL sketch of this k over the data (repsub.core.quantiles); 0: none
    bands: bool | None = (
        None  # the band phase, a second pass by data shard (repsub.core.bands); None: with quantiles
    )
    band_sample: int = 16  # image indices sampled per unit and band (seeded by `seed`); 0: counts only

    @property
    def band_phase(self) -> bool:
        """Whether the sweep runs the band phase: a selectivity pass with quantiles, bands not turned off."""
        return bool(self.data and self.quantile_k and self.bands is not False)


@dataclass(frozen=True)
class ImportanceConfig:
    data: str | None = None  # a labelled ImageFolder or .beton with the model's classes; None: no importance
    images: int | None = None  # a seeded, class-balanced subset of this many images; None: all
    ablation: str = "zero"  # zero | mean (repsub.ablation.ABLATIONS)
    image_size: int | None = None  # None: the selectivity pass's image size
    batch_size: int = 64
    workers: int = 2  # data-loading processes per actor


@dataclass(frozen=True)
class ShardingConfig:
    units_per_shard: int = 64


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 1  # long-lived actors (one model each); pending ones make an autoscaling cluster grow
    gpus: float = 0  # GPUs per actor (0: CPU actors)
    cpus: float = 1


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str | None = None  # an S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)
    region: str | None = None


@dataclass(frozen=True)
class BasisSpec:
    """One basis a sweep fits (repsub.commands.basis.fit_basis's settings) and then measures like the units."""

    name: str
    kind: str
    layers: tuple[str, ...]
    size: int | None = None  # K (None: C; expansion x C for sae)
    positions: int = 16  # sampled positions per image (repsub.capture.positions)
    expansion: int = 4  # sae: K = expansion x C unless `size`
    top_k: int | None = None  # sae: active latents per position (None: C / 8)
    sae_epochs: int = 20
    stability: bool = True  # a second fit with seed + 1, matched against (not for pca: the same fit)


@dataclass(frozen=True)
class SweepConfig:
    # A registered name; from Python also a LoadedModel (repsub.models.from_module: any nn.Module with its
    # layers, input size and normalization), shipped to the workers with the config.
    model: str | LoadedModel
    out: str
    weights: str = "random"
    seed: int = 0
    layers: tuple[str, ...] | None = None  # None: all
    methods: tuple[str, ...] = ("am", "iam")
    units: str | None = None
    device: str = "auto"
    reduce: str = "mean"
    optimization: OptimSettings = field(default_factory=OptimSettings)
    selectivity: SelectivityConfig = field(default_factory=SelectivityConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    allow_mixed: bool = False  # mixing rows of another meaning into a table (runstore.provenance), recorded
    bases: tuple[BasisSpec, ...] = ()

    def basis(self, name: str) -> BasisSpec:
        return next(spec for spec in self.bases if spec.name == name)

    def selectivity_image_size(self) -> int:
        return self.selectivity.image_size or self.optimization.image_size

    def importance_image_size(self) -> int:
        return self.importance.image_size or self.selectivity_image_size()

    def layer_names(self, all_layers) -> list[str]:
        """The layers this sweep covers, given the model's catalog (`layers: all` means every one)."""
        return list(self.layers or [layer.name for layer in all_layers])

    def to_dict(self) -> dict:
        # A model object is recorded (and fingerprinted) by its identity: architecture, weights hash, classes.
        model = self.model if isinstance(self.model, str) else self.model.identity()
        return json.loads(json.dumps(asdict(replace(self, model=model))))

    def fingerprint(self) -> str:
        """A hash of everything that changes results: the same config always plans the same shards.
        (workers, device and storage change where work runs and lands, not what it computes.)"""
        ignored = ("workers", "device", "out", "storage", "allow_mixed")
        payload = {k: v for k, v in self.to_dict().items() if k not in ignored}
        if not payload["bases"]:  # a sweep without bases keeps the fingerprint it had before they existed
            del payload["bases"]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"optimization": OptimSettings, "selectivity": SelectivityConfig, "importance": ImportanceConfig,
             "sharding": ShardingConfig, "workers": WorkersConfig, "storage": StorageConfig}  # fmt: skip


def _section(name: str, cls, values, defaults: dict | None = None):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"config key {name!r} must be a mapping, got {shown(values)}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(shown(k)[1:-1] if isinstance(k, str) else shown(k) for k in set(values) - set(valid))
    if unknown:
        raise UsageError(
            f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; valid keys of {name}: "
            f"{', '.join(valid)}"
        )
    merged = {**(defaults or {}), **values}
    for f in fields(cls):
        if f.name in merged and merged[f.name] is not None:
            merged[f.name] = _typed(f"{name}.{f.name}", merged[f.name], f.type)
    return cls(**merged)


def _typed(key: str, value, type_name):
    """Check one scalar's type (the dataclass annotations are strings under `from __future__`)."""
    text = str(type_name)
    if text.replace(" | None", "") == "bool" and isinstance(value, bool):
        return value
    if "int" in text and "float" not in text and not isinstance(value, bool) and isinstance(value, int):
        return value
    if "float" in text and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if "str" in text and isinstance(value, str):
        return value
    raise UsageError(f"config key {key!r}: expected {text.replace(' | None', '')}, got {shown(value)}")


def parse_config(
    raw: dict, source: str = "config", settings: type[OptimSettings] = OptimSettings
) -> SweepConfig:
    """A validated SweepConfig; `optimization` takes the settings of the class `settings` (each checked by its
    declaration, repsub.optimize.settings)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    valid = [f.name for f in fields(SweepConfig)]
    unknown = sorted(shown(k)[1:-1] if isinstance(k, str) else shown(k) for k in set(raw) - set(valid))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    for key in ("model", "out"):
        if raw.get(key) is None or raw.get(key) == "":
            raise UsageError(f"{source}: {key!r} is required")
    for key in ("out", "weights"):
        if key in raw and not isinstance(raw[key], str):
            raise UsageError(f"{source}: {key} must be text (a path or name), got {shown(raw[key])}")
    model, layers = _model_and_layers(raw, source, settings)
    methods = raw.get("methods", ["am", "iam"])
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods or not all(m in tuple(METHODS) for m in methods):
        raise UsageError(f"{source}: methods {shown(methods)}: valid methods are {', '.join(METHODS)}")
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"{source}: device {shown(device)}; valid: auto, cpu, cuda")
    optimization = _section("optimization", settings, raw.get("optimization"))
    try:
        optimization.validate()
    except UsageError as err:
        raise UsageError(f"{source}: optimization: {err}") from None
    if isinstance(raw.get("selectivity"), dict) and "reduce" in raw["selectivity"]:
        raise UsageError(
            f"{source}: selectivity.reduce moved to the top-level key `reduce`: the objectives and RS of "
            "a run use the reduction of its selectivity"
        )
    reduce = raw.get("reduce", "mean")
    if reduce not in REDUCTIONS:
        raise UsageError(f"{source}: reduce {shown(reduce)}; valid: {', '.join(REDUCTIONS)}")
    selectivity = _section("selectivity", SelectivityConfig, raw.get("selectivity"))
    if selectivity.precision not in PRECISIONS:
        raise UsageError(
            f"{source}: selectivity.precision {selectivity.precision!r}; valid: {', '.join(PRECISIONS)}"
        )
    importance = _section("importance", ImportanceConfig, raw.get("importance"))
    from repsub.ablation.edit import ABLATIONS

    if importance.ablation not in ABLATIONS:
        raise UsageError(
            f"{source}: importance.ablation {importance.ablation!r}; valid: {', '.join(ABLATIONS)}"
        )
    sharding = _section("sharding", ShardingConfig, raw.get("sharding"))
    workers = _section("workers", WorkersConfig, raw.get("workers"))
    storage = _section("storage", StorageConfig, raw.get("storage"))
    from repsub.runstore.storage import (  # no credentials in any location, before any work
        check_endpoint,
        check_location,
    )

    for key, location in (
        ("out", str(raw["out"])),
        ("selectivity.data", selectivity.data),
        ("importance.data", importance.data),
    ):
        check_location(location or "", f"{source}: {key}")
    if storage.endpoint_url:
        check_endpoint(storage.endpoint_url, f"{source}: storage.endpoint_url")
    try:
        for key, value in (
            ("selectivity.batch_size", selectivity.batch_size),
            ("selectivity.images_per_shard", selectivity.images_per_shard),
            ("importance.batch_size", importance.batch_size),
            ("importance.images", 1 if importance.images is None else importance.images),
            ("sharding.units_per_shard", sharding.units_per_shard),
            ("workers.count", workers.count),
        ):
            check_int(value, key, 1)
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None
    units = _units(raw.get("units"), source)
    _check_numbers(source, selectivity, importance, workers)
    if units is not None:
        _check_units_reach(model, raw.get("weights"), layers, units, source)
    from repsub.validate import check_seed

    seed = raw.get("seed", 0)
    try:
        check_seed(seed, "seed")
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None
    allow_mixed = raw.get("allow_mixed", False)
    if not isinstance(allow_mixed, bool):
        raise UsageError(f"{source}: allow_mixed must be true or false, got {shown(allow_mixed)}")
    bases = _bases(raw.get("bases"), source, model, raw.get("weights"), layers, selectivity)
    return SweepConfig(
        model=model,
        out=str(raw["out"]),
        weights=str(raw.get("weights", "random")),
        seed=seed,
        layers=layers,
        methods=tuple(methods),
        units=units,
        device=device,
        reduce=reduce,
        optimization=optimization,
        selectivity=selectivity,
        importance=importance,
        sharding=sharding,
        workers=workers,
        storage=storage,
        allow_mixed=allow_mixed,
        bases=bases,
    )


SWEEP_KINDS = tuple(kind for kind in FITTED_KINDS if kind not in FROM_A_FILE)  # `unit` is every run's


def _bases(value, source: str, model, weights, layers, selectivity) -> tuple[BasisSpec, ...]:
    """`bases:` a list of {name, kind, layers, size, ...}: each kind known, each K allowed on each of its layers
    (repsub.core.bases.fit.check_size), each layer one of the sweep's, names distinct and file-safe."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UsageError(
            f"{source}: bases must be a list of {{name, kind, layers, size, ...}}, got {shown(value)}"
        )
    from repsub.core.bases.fit import check_size, default_size
    from repsub.core.readout import check_basis_name as check_target_name
    from repsub.models import catalog_of
    from repsub.runstore.bases import check_basis_name

    if value and not selectivity.data:
        raise UsageError(
            f"{source}: bases are fitted on selectivity.data: give the selectivity section a data"
        )
    catalog = {
        layer.name: layer
        for layer in catalog_of(model, weights=weights).select(list(layers) if layers else None)
    }
    specs: list[BasisSpec] = []
    for i, entry in enumerate(value):
        where = f"{source}: bases[{i}]"
        if isinstance(entry, dict) and isinstance(entry.get("layers"), str):
            entry = {**entry, "layers": [entry["layers"]]}
        if isinstance(entry, dict) and isinstance(entry.get("layers"), list):
            entry = {**entry, "layers": tuple(entry["layers"])}
        for key in ("name", "kind", "layers"):
            if not isinstance(entry, dict) or entry.get(key) is None:
                raise UsageError(
                    f"{where}: {key!r} is required (a basis is {{name, kind, layers, size, ...}})"
                )
        spec = _section(f"bases[{i}]", BasisSpec, {k: v for k, v in entry.items() if k != "layers"},
                        {"layers": None})  # fmt: skip
        spec = replace(spec, layers=entry["layers"])
        try:
            check_basis_name(spec.name)
            check_target_name(spec.name)
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None
        if spec.kind not in SWEEP_KINDS:
            raise UsageError(f"{where}: kind {spec.kind!r}; valid kinds in a sweep: {', '.join(SWEEP_KINDS)}")
        if spec.name in {s.name for s in specs}:
            raise UsageError(f"{where}: a second basis named {spec.name!r}; each basis needs its own name")
        if not spec.layers or not all(isinstance(layer, str) for layer in spec.layers):
            raise UsageError(f"{where}: layers must list layer names, got {shown(entry['layers'])}")
        missing = [layer for layer in spec.layers if layer not in catalog]
        if missing:
            raise UsageError(
                f"{where}: layer(s) {', '.join(missing)} not among the sweep's layers: {cut(', '.join(catalog), 300)}"
            )
        try:
            for key in ("positions", "expansion", "sae_epochs"):
                check_int(getattr(spec, key), f"bases[{i}].{key}", 1)
            for key in ("size", "top_k"):
                if getattr(spec, key) is not None:
                    check_int(getattr(spec, key), f"bases[{i}].{key}", 1)
            if not isinstance(spec.stability, bool):
                raise UsageError(f"bases[{i}].stability must be true or false, got {shown(spec.stability)}")
            for name in spec.layers:
                n_channels = catalog[name].n_units
                size = spec.size or default_size(spec.kind, n_channels, spec.expansion)
                check_size(spec.kind, name, size, n_channels)
                if spec.kind == "sae" and spec.top_k is not None and spec.top_k > size:
                    raise UsageError(
                        f"top_k {spec.top_k}: the sae keeps 1 to K = {size} latents per position"
                    )
        except UsageError as err:
            raise UsageError(f"{where} ({spec.name}): {err}") from None
        specs.append(spec)
    return tuple(specs)


def _units(value, source: str) -> str | None:
    """`units` as unit ranges text: "0-63", "3,7,10-12", a unit index (3) or a list of indices ([1, 4])."""
    from repsub.selection import parse_ranges

    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, list) and value and all(type(u) is int for u in value):
        value = ",".join(map(str, value))
    if not isinstance(value, str):
        raise UsageError(
            f'{source}: units {shown(value)}: expected unit ranges like "0-15" or "3,7,10-12", a unit index or '
            "a list of indices"
        )
    try:
        parse_ranges(value)  # the syntax, checked before any work
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None
    return value


def _check_numbers(source: str, selectivity, importance, workers) -> None:
    """Counts and resources: each bad value named with its key."""
    from repsub.validate import check_int, check_number

    try:
        for key, value in (("selectivity.workers", selectivity.workers),
                           ("selectivity.exemplars", selectivity.exemplars),
                           ("selectivity.quantile_k", selectivity.quantile_k),
                           ("selectivity.band_sample", selectivity.band_sample),
                           ("importance.workers", importance.workers)):  # fmt: skip
            check_int(value, key, 0)
        for key, value in (("selectivity.image_size", selectivity.image_size),
                           ("importance.image_size", importance.image_size)):  # fmt: skip
            if value is not None:
                check_int(value, key, 1)
        if 0 < selectivity.quantile_k < 8:
            raise UsageError(
                f"selectivity.quantile_k {selectivity.quantile_k}: the sketch needs k >= 8 (or 0: no quantiles)"
            )
        if selectivity.bands and not selectivity.quantile_k:
            raise UsageError(
                "selectivity.bands draws each unit's band edges from its quantiles: not with selectivity.quantile_k "
                "0 (give a k >= 8)"
            )
        if selectivity.quantile_k > 65535:
            raise UsageError(f"selectivity.quantile_k must be at most 65535, got {selectivity.quantile_k}")
        check_number(workers.cpus, "workers.cpus", 0.0)
        check_number(workers.gpus, "workers.gpus", 0.0)
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None


def _check_units_reach(model, weights, layers, units: str, source: str) -> None:
    """A units selection that no layer of the sweep has would plan no unit shard at all."""
    from repsub.models import catalog_of
    from repsub.selection import units_within

    chosen = catalog_of(model, weights=weights).select(list(layers) if layers else None)
    if not any(units_within(units, layer.n_units) for layer in chosen):
        sizes = ", ".join(f"{layer.name} {layer.n_units}" for layer in chosen)
        raise UsageError(
            f"{source}: units {shown(units)} selects no unit of any layer (units per layer: {cut(sizes, 200)})"
        )


def _model_and_layers(raw: dict, source: str, settings) -> tuple[str | LoadedModel, tuple[str, ...] | None]:
    """The model (a registered name; from Python an nn.Module becomes a LoadedModel at the optimization's
    image size) and its layers (None: all) as results store them: catalog names, else module paths."""
    from torch import nn

    from repsub.models import catalog_of, from_module
    from repsub.selection import parse_layer_names

    model, layers = raw["model"], raw.get("layers", "all")
    try:
        layers = None if layers in (None, "all") else parse_layer_names(layers, "layers")
        if not isinstance(model, str | nn.Module):
            raise UsageError(f"model {shown(model)}: expected a model name")
        if isinstance(model, nn.Module):
            size = _section("optimization", settings, raw.get("optimization")).image_size
            model = from_module(model, layers, image_size=size)
        chosen = catalog_of(model, weights=raw.get("weights")).select(layers)
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None
    return model, (tuple(layer.name for layer in chosen) if layers else None)


def load_config(path: str | Path, out: str | None = None) -> SweepConfig:
    """Read and validate a YAML config; `out` (the CLI's --out) overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML: {cut(str(err), 400)}") from None
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from None
    if out is not None and isinstance(raw, dict):
        raw["out"] = out
    return parse_config(raw, source=str(path))


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config needs none, and nested aliases ('billion laughs') expand a
    few lines into gigabytes. Refused at the first one, before anything is built."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise UsageError(
                f"YAML {kind}{cut(str(event.anchor), 40)} at line {event.start_mark.line + 1}: anchors and "
                "aliases are refused in a sweep config (write the value out)"
            )
        return super().compose_node(parent, index)
