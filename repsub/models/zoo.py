"""Every classification model of torchvision (`torchvision.models.list_models(module=torchvision.models)`),
registered by name with its family's catalog rule (repsub.models.catalogs), its weights enum and the
preprocessing of its DEFAULT weights. A family is one row of FAMILIES; the first whose prefix matches wins.

Building details that keep every way of loading a model the same network:
- GoogLeNet and Inception v3 are built without their auxiliary heads (they never run in eval mode) and with
  `transform_input=True`, as torchvision builds them for their ImageNet weights, so a state_dict saved from
  those weights loads into the same forward.
- ViT takes one input size, the crop size of its weights (518 for vit_h_14's SWAG weights), as MaxViT does:
  both refuse another `--image-size`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torchvision
from torch import nn

from repsub.models.catalogs import CatalogRule, relu_sequence, residual_blocks, stages
from repsub.models.registry import ModelSpec, register_model
from repsub.models.weights import weights_preprocessing


def _resnet_stages(model: nn.Module) -> list[str]:
    return ["layer1", "layer2", "layer3", "layer4"]


def _regnet_stages(model: nn.Module) -> list[str]:
    return [f"trunk_output.{name}" for name, _ in model.trunk_output.named_children()]


def _drop_aux_heads(model: nn.Module) -> None:
    model.aux_logits = False
    for name in ("aux1", "aux2", "AuxLogits"):
        if hasattr(model, name):
            setattr(model, name, None)


@dataclass(frozen=True)
class Family:
    name: str
    prefixes: tuple[str, ...]
    rule: CatalogRule
    reads: str  # what the catalog reads, for `repsub layers --list-models` and the README
    build_kwargs: dict = field(default_factory=dict)  # for a fresh model (weights=None)
    structure: Callable[[object], dict] | None = None  # weights member -> kwargs that shape the model
    finalize: Callable[[nn.Module], None] | None = None  # applied after every build
    ignored_keys: tuple[str, ...] = ()  # state_dict key prefixes of what finalize removes
    fixed_size: bool = False


FAMILIES = (
    Family("vgg", ("vgg",), relu_sequence("blocks"), "after each ReLU: conv1_1 ... conv5_3, fc6, fc7, fc8"),
    Family("alexnet", ("alexnet",), relu_sequence("flat"), "after each ReLU: conv1 ... conv5, fc6, fc7, fc8"),
    Family(
        "resnet", ("resnet", "resnext", "wide_resnet"), residual_blocks(("stem", "relu"), _resnet_stages),
        "stem (after its ReLU), every residual block's output (layer1.0 ...), fc logits",
    ),
    Family(
        "regnet", ("regnet",), residual_blocks(("stem", "stem"), _regnet_stages),
        "stem (after its ReLU), every residual block's output (trunk_output.block1.block1-0 ...), fc logits",
    ),
    Family(
        "inception", ("googlenet", "inception"), stages,
        "top-level stages (conv1 ... inception5b / Mixed_7c), fc logits",
        build_kwargs={"transform_input": True, "aux_logits": False, "init_weights": True},
        finalize=_drop_aux_heads, ignored_keys=("aux1.", "aux2.", "AuxLogits."),
    ),
    Family(
        "vit", ("vit_",), stages, "every encoder layer's tokens (encoder.layers.encoder_layer_0 ...), logits",
        structure=lambda weights: {"image_size": weights.meta["min_size"][0]}, fixed_size=True,
    ),
    Family("maxvit", ("maxvit",), stages, "stem, every block stage (blocks.0 ...), classifier logits",
           fixed_size=True),
    Family("stages", ("",), stages, "top-level feature stages (features.0 ...), classifier logits"),
)  # fmt: skip


def family_of(name: str) -> Family:
    return next(f for f in FAMILIES if name.startswith(f.prefixes))


def _register(name: str) -> None:
    family = family_of(name)
    builder = torchvision.models.get_model_builder(name)
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT

    def build(num_classes: int, variant=None) -> nn.Module:
        shape = family.structure(variant or default) if family.structure else {}
        model = builder(weights=None, num_classes=num_classes, **family.build_kwargs, **shape)
        if family.finalize:
            family.finalize(model)
        return model

    def pretrained(member) -> nn.Module:
        model = builder(weights=member)
        if family.finalize:
            family.finalize(model)
        return model

    register_model(ModelSpec(
        name=name, build=build, rule=family.rule, preprocessing=weights_preprocessing(default),
        num_classes=len(default.meta["categories"]), family=family.name,
        description=f"torchvision {name}; catalog: {family.reads}",
        weights_enum=enum, pretrained=pretrained, min_size=int(default.meta.get("min_size", (1, 1))[0]),
        fixed_size=family.fixed_size, ignored_keys=family.ignored_keys,
    ))  # fmt: skip


for _name in torchvision.models.list_models(module=torchvision.models):
    _register(_name)
