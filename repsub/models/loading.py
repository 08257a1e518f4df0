"""Loading a model with its weights, its catalog and its preprocessing: by registered name (`load_model`),
from any nn.Module (`from_module`), or either (`resolve_model`, what the API and the sweep call)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from repsub.errors import UsageError
from repsub.models import paper, zoo  # noqa: F401  (registration: the models get_spec finds)
from repsub.models.catalogs import Catalog, stages
from repsub.models.layers import UnitLayer
from repsub.models.probe import probe_forward
from repsub.models.registry import ModelSpec, get_spec, unknown_model_message
from repsub.models.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    WeightsChoice,
    load_state_file,
    parse_weights,
    state_dict_sha256,
    weights_preprocessing,
)
from repsub.validate import check_int


@dataclass
class LoadedModel:
    """A model in eval mode, its catalog, its preprocessing, and how its weights were obtained.

    Constructed by load_model / from_module; built by hand (name, module, layers, ...) its catalog holds just
    `layers` (no module names beyond them)."""

    name: str
    module: nn.Module
    layers: list[UnitLayer]
    weights: str  # as given: "random", "imagenet", an enum name, a path, or "module" (an nn.Module given)
    weights_sha256: str
    num_classes: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_size: int = 224  # the model's input side (torchvision: its weights' crop size)
    resize_size: int | None = None  # shorter side before the crop at image_size (None: 256/224 of it)
    architecture: str = ""  # the module's class path
    torchvision_weights: str | None = None  # e.g. "VGG16_Weights.IMAGENET1K_V1"
    min_size: int = 1
    fixed_size: bool = False
    preprocessing_source: str = "repsub default"
    catalog: Catalog | None = None  # the layers, and any other module by name (load_model, from_module)

    def __post_init__(self):
        if self.catalog is None:
            self.catalog = Catalog(self.name, self.layers, None)
        self.layers = self.catalog.layers

    @property
    def preprocessing(self) -> Preprocessing:
        if self.resize_size is None:
            return Preprocessing.classic(self.image_size, self.mean, self.std, self.preprocessing_source)
        return Preprocessing(self.image_size, self.resize_size, tuple(self.mean), tuple(self.std),
                             self.preprocessing_source)  # fmt: skip

    @property
    def resize_ratio(self) -> tuple[int, int]:
        return self.preprocessing.resize_ratio

    @classmethod
    def made(cls, catalog: Catalog, prep: Preprocessing, **values) -> LoadedModel:
        """A LoadedModel with `catalog` and the preprocessing `prep`."""
        return cls(
            layers=catalog.layers, catalog=catalog, mean=prep.mean, std=prep.std, image_size=prep.image_size,
            resize_size=prep.resize_size, preprocessing_source=prep.source, **values,
        )  # fmt: skip

    def identity(self) -> dict:
        """What the manifest records about the model. A run compares architecture, weights hash and class
        count (repsub.runstore.writer.RunWriter.check_run); the rest (where the weights came from) is information."""
        return {
            "model": self.name,
            "architecture": self.architecture,
            "weights": self.weights,
            **({"torchvision_weights": self.torchvision_weights} if self.torchvision_weights else {}),
            "weights_sha256": self.weights_sha256,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
        }

    def layer(self, name: str) -> UnitLayer:
        return self.catalog.layer(name)

    def select(self, names: Iterable[str] | None) -> list[UnitLayer]:
        """Layers by catalog name or module path (all of the catalog for None), in forward order."""
        return self.catalog.select(names)

    def catalog_records(self, also: Iterable[str] = ()) -> list[dict]:
        return self.catalog.records(also)

    def check_image_size(self, size: int) -> None:
        if self.fixed_size and size != self.image_size:
            raise UsageError(f"{self.name} takes {self.image_size} px images only, not {size}")
        if size < self.min_size:
            raise UsageError(f"{self.name} takes images of {self.min_size} px or more, not {size}")

    def to(self, device: str | torch.device) -> LoadedModel:
        self.module.to(device)
        return self


def meta_build(spec: ModelSpec, num_classes: int, variant=None) -> nn.Module:
    """The model on the meta device: shapes without memory or initialization. Builders that compute with
    tensors (RegNet's widths) cannot run under a meta default device: their parameters go to meta as they
    are registered instead."""
    try:
        with torch.device("meta"):
            return spec.build(num_classes, variant)
    except NotImplementedError:
        with _parameters_on_meta():
            return spec.build(num_classes, variant).to("meta")


@contextlib.contextmanager
def _parameters_on_meta():
    register = nn.Module.register_parameter

    def on_meta(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


@functools.cache
def _default_catalog(name: str, num_classes: int, variant) -> tuple[tuple[UnitLayer, ...], object]:
    spec = get_spec(name)
    model = meta_build(spec, num_classes, variant).eval()
    prep = weights_preprocessing(variant) if variant is not None else spec.preprocessing
    facts = probe_forward(model, prep.image_size, name)
    return tuple(Catalog.from_rule(name, model, facts, spec.rule).layers), facts


def model_catalog(name: str, num_classes: int | None = None, weights: str | None = None) -> Catalog:
    """A registered model's catalog, built on the meta device (no memory, no weights). `weights` matters only
    where it changes the network: a torchvision enum member (class count, ViT's input size), a file (its
    class count, unless `num_classes` is given)."""
    spec = get_spec(name)
    variant = None
    if weights not in (None, "random"):
        with contextlib.suppress(UsageError, KeyError):  # weights that cannot be read fail where loaded
            choice = parse_weights(name, weights, spec.weights_enum)
            variant = choice.enum
            if choice.path is not None and num_classes is None:  # the file's class count
                num_classes = int(load_state_file(choice.path)[classifier_key(name)].shape[0])
    if num_classes is None:
        categories = variant.meta.get("categories") if variant is not None else None
        num_classes = len(categories) if categories else spec.num_classes
    layers, facts = _default_catalog(name, num_classes, variant)
    return Catalog(name, list(layers), facts)


def catalog_of(
    model: str | LoadedModel, num_classes: int | None = None, weights: str | None = None
) -> Catalog:
    """The catalog of a registered model (meta device) or of a LoadedModel (its own)."""
    if isinstance(model, LoadedModel):
        return model.catalog
    if not isinstance(model, str):
        raise UsageError(unknown_model_message(model))
    return model_catalog(model, num_classes, weights)


def catalog(model_name: str, num_classes: int | None = None) -> list[UnitLayer]:
    """The unit layers of a registered model (built on the meta device: no memory, no weights)."""
    return model_catalog(model_name, num_classes).layers


def select_layers(all_layers: list[UnitLayer], names: list[str] | None, model_name: str) -> list[UnitLayer]:
    """The layers named among `all_layers` (in their order), or all of them; an unknown name lists the valid
    ones. (Module names need a model: LoadedModel.select or model_catalog(...).select.)"""
    if not names:
        return list(all_layers)
    by_name = {layer.name: layer for layer in all_layers}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(
            f"unknown layer(s) {', '.join(unknown)} for {model_name}; valid layers: {', '.join(by_name)}"
        )
    wanted = set(names)
    return [layer for layer in all_layers if layer.name in wanted]


@functools.cache
def classifier_key(name: str) -> str:
    """The state_dict key whose rows are the classes: the last parameter of two or more dimensions whose first
    dimension is the class count (the logits layer's weight)."""
    spec = get_spec(name)
    model = meta_build(spec, spec.num_classes)
    keys = [k for k, p in model.named_parameters() if p.dim() >= 2 and p.shape[0] == spec.num_classes]
    return keys[-1]


def load_model(
    name: str,
    weights: str = "random",
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> LoadedModel:
    """Build a registered model in eval mode with its weights (repsub.models.weights: random, imagenet,
    DEFAULT or a torchvision enum name, or a state_dict path; the class count of a file is read from its
    classifier's shape). `num_classes` applies to random weights."""
    spec = get_spec(name)
    choice = parse_weights(name, weights, spec.weights_enum)
    if choice.enum is not None:
        module = _pretrained(spec, choice)
    elif choice.random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = spec.build(num_classes or spec.num_classes, None)
    else:
        module = _from_state_file(spec, choice.path, weights)
    prep = weights_preprocessing(choice.enum) if choice.enum is not None else spec.preprocessing
    module.eval().requires_grad_(False).to(device)
    classes = int(module.state_dict()[classifier_key(name)].shape[0])
    facts = probe_forward(module, prep.image_size, name)
    return LoadedModel.made(
        Catalog.from_rule(name, module, facts, spec.rule), prep, name=name, module=module,
        weights=str(weights), weights_sha256=state_dict_sha256(module.state_dict()), num_classes=classes,
        architecture=_class_path(module), torchvision_weights=_enum_name(choice.enum),
        min_size=spec.min_size, fixed_size=spec.fixed_size,
    )  # fmt: skip


def _enum_name(member) -> str | None:
    return f"{type(member).__name__}.{member.name}" if member is not None else None


def _pretrained(spec: ModelSpec, choice: WeightsChoice) -> nn.Module:
    member = choice.enum
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
    was_cached = cached.is_file()
    try:
        return spec.pretrained(member)
    except Exception as err:  # no network, proxy, corrupt cache...
        what = f"torchvision's {type(member).__name__}.{member.name} weights for {spec.name}"
        if was_cached:
            raise UsageError(f"cannot load {what} from torchvision's cache {cached}: {err}") from err
        raise UsageError(
            f"{what} are not in torchvision's cache ({cached}, under $TORCH_HOME) and could not be "
            f"downloaded ({err}): copy the file there where the network allows, or pass --weights PATH "
            "(a state_dict file)"
        ) from err


def _from_state_file(spec: ModelSpec, path: Path, given: str) -> nn.Module:
    state = load_state_file(path)
    if spec.ignored_keys:  # e.g. torchvision's GoogLeNet file holds the auxiliary heads the model leaves out
        state = {k: v for k, v in state.items() if not k.startswith(spec.ignored_keys)}
    key = classifier_key(spec.name)
    if key not in state:
        raise UsageError(f"{given} is not a {spec.name} state_dict: it has no {key!r}")
    classes = int(state[key].shape[0])
    module = meta_build(spec, classes)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UsageError(
            f"{given} does not match model {spec.name}: "
            + "; ".join(
                f"{what} {len(keys)} key(s) ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise UsageError(f"{given} does not match model {spec.name}: {str(err)[:800]}") from err
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):  # non-persistent buffers
        module = spec.build(classes, None)
        module.load_state_dict(state, strict=True)
    return module


def from_module(
    module: nn.Module,
    layers: Iterable[str] | None = None,
    image_size: int = 224,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    name: str | None = None,
    resize_size: int | None = None,
) -> LoadedModel:
    """Any nn.Module as a model, no registration: `layers` (module names, as `model.named_modules()` lists
    them; default: the `stages` rule of repsub.models.catalogs), its input size and normalization (default:
    ImageNet's).
    Puts the module in eval mode with its parameters frozen (the optimization climbs images, not weights).
    A named module that does not exist or never runs in the forward is refused, named."""
    if not isinstance(module, nn.Module):
        raise UsageError(unknown_model_message(module))
    name = name or _class_path(module)
    module.eval().requires_grad_(False)
    facts = probe_forward(module, image_size, name)
    default = Catalog.from_rule(name, module, facts, stages)
    chosen = default.select(layers) if layers else default.layers
    prep = Preprocessing.classic(image_size, mean or IMAGENET_MEAN, std or IMAGENET_STD, source="given")
    if resize_size is not None:
        prep = Preprocessing(image_size, resize_size, prep.mean, prep.std, source="given")
    output = facts.output_shape
    return LoadedModel.made(
        Catalog(name, chosen, facts), prep, name=name, module=module, weights="module",
        weights_sha256=state_dict_sha256(module.state_dict()),
        num_classes=output[1] if output is not None and len(output) == 2 else None,
        architecture=_class_path(module),
    )  # fmt: skip


def resolve_model(
    model: str | nn.Module | LoadedModel,
    weights: str | None = "random",
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    layers: Iterable[str] | None = None,
    image_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> LoadedModel:
    """A model by registered name, an nn.Module (with `layers`, `image_size`, `mean`, `std`), or a LoadedModel
    as it is; on `device`."""
    if isinstance(model, LoadedModel):
        return model.to(device)
    if isinstance(model, nn.Module):
        if weights not in (None, "random"):
            raise UsageError(
                f"weights {weights!r}: an nn.Module brings its own weights (load them into it first)"
            )
        return from_module(model, layers, image_size or 224, mean, std).to(device)
    if not isinstance(model, str):
        raise UsageError(unknown_model_message(model))
    if mean is not None or std is not None:
        raise UsageError(f"mean and std come with {model}'s weights; they can be given for an nn.Module only")
    return load_model(model, weights or "random", seed=seed, device=device, num_classes=num_classes)


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_image_size(model, size, option: str = "--image-size") -> int:
    """An image size the model takes: at least 1 px, what the model allows (fixed size, minimum), and one its
    forward runs at (a meta-device probe: a network whose pooling shrinks the map to nothing is refused)."""
    check_int(size, option, 1)
    try:
        model.check_image_size(size)
        if size != model.image_size:
            _probe(model, size)
    except UsageError as err:
        raise UsageError(f"{option} {size}: {err}") from None
    return size


def _probe(model, size: int) -> None:
    probe_forward(model.module, size, label=model.name)
