"""The model registry, shaped like torchvision's: `register_model(spec)` adds a model, `get_spec` finds it.

A family of architectures is data (a builder, a catalog rule, its preprocessing and weights), not a new branch
in the loading code: repsub.models.paper registers the paper's models, repsub.models.zoo every torchvision
classification model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from repsub.errors import UsageError
from repsub.models.catalogs import CatalogRule
from repsub.models.weights import Preprocessing


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # (num_classes, weights enum member or None) -> a model with fresh initialization; the enum member only
    # shapes it (ViT's image size for SWAG weights), it loads nothing
    build: Callable[[int, object | None], nn.Module]
    rule: CatalogRule
    preprocessing: Preprocessing  # the architecture's default (torchvision: its DEFAULT weights')
    num_classes: int
    description: str  # what it is and what its catalog reads (`repsub layers --list-models --json`)
    family: str
    weights_enum: type | None = None  # torchvision's WeightsEnum class; None for repsub's own models
    # weights enum member -> the model with those weights, through torchvision's weights API (its cache)
    pretrained: Callable[[object], nn.Module] | None = None
    min_size: int = 1  # smallest input side (torchvision's weights metadata)
    fixed_size: bool = False  # takes its own input size only (ViT, MaxViT)
    # state_dict key prefixes of parts the model leaves out (GoogLeNet's auxiliary heads): skipped in a file
    ignored_keys: tuple[str, ...] = ()

    @property
    def default_image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def default_num_classes(self) -> int:
        return self.num_classes


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    return sorted(MODELS)


def get_spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise UsageError(unknown_model_message(model))
    return MODELS[model]


def unknown_model_message(model: object) -> str:
    text = str(model)
    if len(text) > 60 or "\n" in text:  # an object printed whole would bury the message
        text = f"{type(model).__name__} object"
    close = difflib.get_close_matches(str(model), list(MODELS), n=4, cutoff=0.5)
    own = [name for name, spec in MODELS.items() if spec.weights_enum is None]
    torchvision = len(MODELS) - len(own)
    return (
        f"unknown model {text!r}; valid models: {', '.join(own)}, vgg16 and {torchvision - 1} more "
        "torchvision classification models (`repsub layers --list-models` lists them), or an nn.Module from "
        "Python" + (f"; closest: {', '.join(close)}" if close else "")
    )
