"""Extending a run: what a command that writes into an existing run takes from it when not given.

The run's manifest records its model (`model`: name, weights as given, weights hash, class count), and each
command's configuration (seed, layers, image size, optimization settings). A command that adds units, layers
or a method to the run re-creates the model from that record (verifying the weights hash: a weights file that
changed since is refused), and takes the run's seed, layers, image size and optimization settings unless
given, so that what it adds is comparable with what is there. It says on stderr what it took.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from repsub.errors import RunError, UsageError
from repsub.optimize.settings import OptimSettings, reused_names
from repsub.runstore.location import RunLocation
from repsub.runstore.manifest import model_mismatch
from repsub.selection import parse_layer_names

ALL_LAYERS = "all"
IMAGE_SIZE_TABLES = (
    "selectivity",
    "units",
    "importance",
)  # `--layers all`: every layer of the catalog, whatever the run covers


@dataclass
class RunRecord:
    """An existing run's manifest (None for a new run), and what a command took from it."""

    uri: str | None
    manifest: dict | None
    taken: list[str] = field(default_factory=list)  # "model shallow_cnn", "steps 16", ...

    @classmethod
    def read(cls, out) -> RunRecord:
        manifest = RunLocation(out).read_manifest() if out is not None else None
        return cls(None if out is None else str(out), manifest)

    @property
    def model(self) -> dict:
        return (self.manifest or {}).get("model") or {}

    def _configs(self) -> list[tuple[str, dict]]:
        """(command, config) of the run's commands, the most recently completed last."""
        commands = (self.manifest or {}).get("commands") or {}
        ordered = sorted(commands.items(), key=lambda item: str(item[1].get("completed_at") or ""))
        return [(name, command.get("config") or {}) for name, command in ordered]

    def seed(self) -> int | None:
        for _, config in reversed(self._configs()):
            if isinstance(config.get("seed"), int):
                return config["seed"]
        return None

    def layers(self) -> list[str] | None:
        """The layers the run's commands covered (None: every layer, or no command yet)."""
        names: list[str] = []
        for _, config in self._configs():
            if "layers" not in config:
                continue
            if config["layers"] is None:  # a sweep's `layers: all`
                return None
            names += [name for name in config["layers"] if name not in names]
        return names or None

    def settings(self, settings: type[OptimSettings] = OptimSettings) -> dict:
        """The optimization settings of the run's latest visualize or sweep that a command extending it takes:
        those the class `settings` declares `reused` (not precision: it depends on the hardware)."""
        reused = reused_names(settings)
        for name, config in reversed(self._configs()):
            if name == "sweep" or name.startswith("visualize/"):
                recorded = config.get("optimization" if name == "sweep" else "settings") or {}
                return {k: v for k, v in recorded.items() if k in reused and v is not None}
        return {}

    def table_image_size(self, table: str) -> int | None:
        """The image size of the run's latest rows of `table` (selectivity, units, importance), if recorded."""
        for name, config in reversed(self._configs()):
            size = _recorded_size(table, name, config)
            if size:
                return int(size)
        return None

    def image_size(self, table: str) -> int | None:
        """The image size a command writing `table` takes from the run: its own table's, then the other
        tables' (selectivity, units, importance); None for a new run (repsub.commands.context)."""
        order = [table, *(t for t in IMAGE_SIZE_TABLES if t != table)]
        return next((size for t in order if (size := self.table_image_size(t))), None)

    def say(self) -> None:
        if self.taken:
            print(f"note: from the run {self.uri}: {', '.join(self.taken)}", file=sys.stderr)


@dataclass
class ModelChoice:
    """What resolve_model gets: the model (a name, a module...), its weights and seed, and the class count of
    random weights re-created from the run."""

    model: object
    weights: str
    seed: int
    num_classes: int | None = None
    from_run: bool = False  # the weights were taken from the run: verify_recreated checks their hash


def model_for_run(record: RunRecord, model, weights: str | None, seed: int | None) -> ModelChoice:
    """The model, weights and seed given, else the run's: without a model, the run's is re-created by name
    with its weights as recorded; a model given by name without weights takes the run's weights when it is
    the run's model. The seed (random weights, per-unit seeds) is the run's unless given."""
    recorded, taken = record.model, []
    if model is None:
        if record.manifest is None:
            where = f" ({record.uri} holds no run to take it from)" if record.uri else ""
            raise UsageError(
                f"give a model: --model NAME (repsub layers --list-models lists them){where}; a command that "
                "writes into an existing run takes the run's model from its manifest"
            )
        model = _recreatable_name(record)
        taken.append(f"model {model}")
    from_run = (
        weights is None
        and isinstance(model, str)
        and record.manifest is not None
        and model == recorded.get("model")
    )
    if from_run:
        weights = _run_weights(record, model)
        taken.append(f"weights {recorded.get('weights')}")
    if seed is None and (seed := record.seed()) is not None and seed != 0:  # (0: the default, not said)
        taken.append(f"seed {seed}")
    record.taken[:0] = taken
    random_classes = recorded.get("num_classes") if from_run and weights == "random" else None
    return ModelChoice(model, weights or "random", seed or 0, random_classes, from_run)


def preprocessing_for_run(record: RunRecord, model, mean, std) -> tuple:
    """An nn.Module's normalization: given, else the run's (a module run records what it was given)."""
    from torch import nn

    prep = record.model.get("preprocessing") or {}
    if not isinstance(model, nn.Module) or mean is not None or std is not None or "mean" not in prep:
        return mean, std
    record.taken.append(f"mean {tuple(prep['mean'])}, std {tuple(prep['std'])}")
    return tuple(prep["mean"]), tuple(prep["std"])


def verify_recreated(record: RunRecord, choice: ModelChoice, loaded) -> None:
    """A model re-created from the run's record must be the run's: the same weights hash. (A model given by
    the user is checked by RunWriter.check_run, which says how it differs.)"""
    recorded = record.model
    if not choice.from_run or loaded.weights_sha256 == recorded.get("weights_sha256"):
        return
    given = recorded.get("weights")
    now, then = loaded.weights_sha256[:12], str(recorded.get("weights_sha256"))[:12]
    if given == "random":
        why = (
            f"random weights of seed {choice.seed} do not give the run's weights (another seed was given, or "
            "another torch version initializes differently)"
        )
    else:
        why = f"the weights {choice.weights} are not the run's: the file changed since the run was made"
    raise RunError(
        f"{record.uri}: {why} (sha256 {now}… now, {then}… in the run). Pass the run's weights with --weights "
        "(their content is checked), or write to another output location"
    )


def load_for_run(
    record: RunRecord,
    model,
    weights,
    seed,
    device,
    image_size=None,
    mean=None,
    std=None,
    run_size: int | None = None,
) -> tuple:
    """(LoadedModel, seed, whether it is the run's model): the model given, else the run's re-created and
    verified. An nn.Module is built at `image_size`, else the run's (`run_size`), with the run's
    normalization unless given."""
    from torch import nn

    from repsub.models import resolve_model

    choice = model_for_run(record, model, weights, seed)
    mean, std = preprocessing_for_run(record, choice.model, mean, std)
    if isinstance(choice.model, nn.Module) and image_size is None:
        image_size = run_size
    loaded = resolve_model(
        choice.model,
        choice.weights,
        seed=choice.seed,
        device=device,
        num_classes=choice.num_classes,
        image_size=image_size,
        mean=mean,
        std=std,
    )
    verify_recreated(record, choice, loaded)
    return loaded, choice.seed, same_model(record, loaded)


def same_model(record: RunRecord, loaded) -> bool:
    """Whether `loaded` is the run's model (only then are the run's layers and settings its own)."""
    return record.manifest is not None and model_mismatch(record.model, loaded.identity()) is None


def layers_for_run(record: RunRecord, layers, reuse: bool, catalog: list[str]) -> list[str] | None:
    """The layers asked for (`all`: every layer), else the run's when `reuse`, else None (every layer of
    `catalog`, the model's default layers)."""
    layers = parse_layer_names(layers, "layers")
    if layers and list(layers) == [ALL_LAYERS]:
        return None
    if layers:
        return list(layers)
    run_layers = record.layers() if reuse else None
    if not run_layers or set(run_layers) == set(catalog):
        return None
    record.taken.append(f"layers {','.join(run_layers)}")
    return run_layers


def settings_for_run(
    record: RunRecord,
    given: dict,
    reuse: bool,
    image_size: int,
    settings: type[OptimSettings] = OptimSettings,
) -> OptimSettings:
    """The settings (of the class `settings`): those given, else the run's (its latest visualize or sweep),
    else the defaults; the image size is the command's (repsub.commands.context, which says where it came
    from)."""
    values = dict(record.settings(settings)) if reuse else {}
    values.pop("image_size", None)
    # Said: the steps, and the other settings taken where they are not the defaults.
    default = settings()
    taken = [k for k in reused_names(settings) if k in values and k not in given]
    said = [k for k in taken if k == "steps" or values[k] != getattr(default, k)]
    if said:
        record.taken.append(", ".join(f"{k.replace('_', ' ')} {values[k]}" for k in said))
    return settings(**{**values, "image_size": image_size, **given})


def _recreatable_name(record: RunRecord) -> str:
    from repsub.models import MODELS

    recorded = record.model
    name = recorded.get("model")
    if recorded.get("weights") == "module" or name not in MODELS:
        raise UsageError(
            f"{record.uri} was made with a model given from Python ({recorded.get('architecture') or name}), "
            "which cannot be re-created by name: pass the same module from Python, e.g. "
            "repsub.visualize(model=net, out=...) (its layers, image size, mean and std are then the run's)"
        )
    return name


def _run_weights(record: RunRecord, name: str) -> str:
    """The run's weights as recorded; a file that is not where the record says is looked for in the run
    (where `repsub demo` keeps its weights), else refused with what to do."""
    from repsub.models import get_spec
    from repsub.models.weights import weights_names

    given = str(record.model.get("weights") or "random")
    names = ["random", "imagenet", *weights_names(get_spec(name).weights_enum)]
    if given in names or Path(given).is_file():
        return given
    in_run = Path(record.uri or "") / Path(given).name
    if record.uri and "://" not in record.uri and in_run.is_file():
        return str(in_run)
    raise UsageError(
        f"{record.uri} was made with the weights file {given}, which is not found from here (a relative path "
        "is read from the current directory): pass --weights PATH (its content is checked against the run's)"
    )


def _recorded_size(table: str, command: str, config: dict) -> int | None:
    """The image size with which `command` (its recorded `config`) wrote rows of `table`, if it did."""
    if command == "sweep":
        optimization = config.get("optimization") or {}
        section = config.get(table) or {}
        if table == "units":
            return optimization.get("image_size")
        if not section.get("data"):
            return None  # the sweep wrote no such rows
        selectivity = config.get("selectivity") or {}
        fallback = selectivity.get("image_size") or optimization.get("image_size")
        return section.get("image_size") or fallback
    writes = {"selectivity": command == "selectivity", "units": command.startswith("visualize/"),
              "importance": command.startswith("importance/")}  # fmt: skip
    if not writes[table]:
        return None
    return (config.get("settings") or {}).get("image_size") if table == "units" else config.get("image_size")
