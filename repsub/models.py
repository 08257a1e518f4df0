"""Model registry, weights loading and the unit catalog.

A *unit layer* is a Conv2d or Linear layer whose units are read after its ReLU (the last
classifier layer has none: its units are the logits). The catalog is derived from the module
order, so every registered model gets the same treatment: the point where a layer is read is
the ReLU that directly follows it, or the layer itself when no ReLU follows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from .errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


READS = {
    "relu": "after ReLU",
    "block": "block output (after its final ReLU)",
    "logits": "logits",
    "module": "raw module output",
}


@dataclass(frozen=True)
class UnitLayer:
    """One layer of units: its stable name, unit count and the module whose output is read."""

    name: str
    units: int
    module: str  # dotted path of the module whose output holds the layer's units
    kind: str  # "conv" (units are channels) or "linear" (units are neurons)
    read: str  # how the layer is read: a key of READS
    # The ReLU module whose input, on its last call within `module`'s forward, is the layer's
    # pre-activation; None when the value read is not a ReLU output (logits, raw module output).
    relu: str | None = None

    @property
    def after_relu(self) -> bool:
        return self.relu is not None

    def record(self, depth: int) -> dict:
        """What a run's manifest keeps about the layer, so reports read the truth, never a guess."""
        return {"name": self.name, "units": self.units, "module": self.module, "kind": self.kind,
                "read": self.read, "depth": depth}  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> model with fresh (default) initialization
    layer_names: tuple[str, ...]  # names of the Conv2d/Linear layers, in forward order
    logits_weight_key: str  # state_dict key of the classifier weight: its rows are the classes
    default_image_size: int
    default_num_classes: int
    description: str


class ShallowCNN(nn.Module):
    """The paper's shallow CNN: conv 64, 64, 128, 128 (3x3, stride 1), a fully connected layer, the classifier.

    Max pooling after the second and fourth convolutions and an adaptive average pool to 4x4 make
    it accept any image size of 4 px or more (the paper trains it on 32 px CIFAR-10 images).
    """

    def __init__(self, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(128 * 4 * 4, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MLP(nn.Module):
    """The paper's MLP: hidden layers of 128, 512, 2048 and 2048 units on the flattened image, then the classifier.

    The input is resized to 32x32 first, so any image size is accepted.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        self.input_size = input_size
        widths = [3 * input_size * input_size, 128, 512, 2048, 2048]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.classifier(torch.flatten(x, 1))


def _vgg16(num_classes: int) -> nn.Module:
    return torchvision.models.vgg16(weights=None, num_classes=num_classes)


MODELS: dict[str, ModelSpec] = {
    "vgg16": ModelSpec(
        name="vgg16",
        build=_vgg16,
        layer_names=(
            "conv1_1",
            "conv1_2",
            "conv2_1",
            "conv2_2",
            "conv3_1",
            "conv3_2",
            "conv3_3",
            "conv4_1",
            "conv4_2",
            "conv4_3",
            "conv5_1",
            "conv5_2",
            "conv5_3",
            "fc6",
            "fc7",
            "fc8",
        ),  # fmt: skip
        logits_weight_key="classifier.6.weight",
        default_image_size=224,
        default_num_classes=1000,
        description="torchvision VGG16 (ImageNet weights: IMAGENET1K_V1)",
    ),
    "shallow_cnn": ModelSpec(
        name="shallow_cnn",
        build=ShallowCNN,
        layer_names=("conv1", "conv2", "conv3", "conv4", "fc5", "fc6"),
        logits_weight_key="classifier.2.weight",
        default_image_size=32,
        default_num_classes=10,
        description="the paper's shallow CNN: conv 64,64,128,128, fc 128, classifier",
    ),
    "mlp": ModelSpec(
        name="mlp",
        build=MLP,
        layer_names=("fc1", "fc2", "fc3", "fc4", "fc5"),
        logits_weight_key="classifier.8.weight",
        default_image_size=32,
        default_num_classes=10,
        description="the paper's MLP: 128, 512, 2048, 2048, classifier",
    ),
}


def get_spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    return MODELS[model]


def unit_layers(model: nn.Module, spec: ModelSpec) -> list[UnitLayer]:
    """The catalog: every Conv2d/Linear layer of `model`, named by `spec`, with where it is read."""
    leaves = [(path, m) for path, m in model.named_modules() if not list(m.children())]
    found: list[UnitLayer] = []
    for i, (path, module) in enumerate(leaves):
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        follower = leaves[i + 1] if i + 1 < len(leaves) else None
        relu = follower is not None and isinstance(follower[1], nn.ReLU)
        units = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        found.append(UnitLayer(
            name="", units=units, module=follower[0] if relu else path,
            kind="conv" if isinstance(module, nn.Conv2d) else "linear",
            read="relu" if relu else "logits", relu=follower[0] if relu else None,
        ))  # fmt: skip
    if len(found) != len(spec.layer_names):
        raise RuntimeError(f"{spec.name}: found {len(found)} unit layers, expected {len(spec.layer_names)}")
    return [replace(u, name=n) for n, u in zip(spec.layer_names, found, strict=True)]


def catalog(model_name: str, num_classes: int | None = None) -> list[UnitLayer]:
    """The unit layers of a registered model (built on the meta device: no memory, no weights)."""
    spec = get_spec(model_name)
    with torch.device("meta"):
        model = spec.build(num_classes or spec.default_num_classes)
    return unit_layers(model, spec)


def select_layers(all_layers: list[UnitLayer], names: list[str] | None, model_name: str) -> list[UnitLayer]:
    """The layers named (in catalog order), or all of them; an unknown name lists the valid ones."""
    if not names:
        return list(all_layers)
    by_name = {layer.name: layer for layer in all_layers}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(
            f"unknown layer(s) {', '.join(unknown)} for model {model_name}; valid layers: {', '.join(by_name)}"
        )
    wanted = set(names)
    return [layer for layer in all_layers if layer.name in wanted]


@dataclass
class LoadedModel:
    """A model in eval mode, its catalog, and how its weights were obtained."""

    name: str
    module: nn.Module
    layers: list[UnitLayer]
    weights: str  # "imagenet", "random" or the path given
    weights_sha256: str
    num_classes: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def identity(self) -> dict:
        return {
            "model": self.name,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "num_classes": self.num_classes,
        }

    def layer(self, name: str) -> UnitLayer:
        return select_layers(self.layers, [name], self.name)[0]

    def catalog_records(self) -> list[dict]:
        return [layer.record(depth) for depth, layer in enumerate(self.layers)]


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes and bytes), independent of the file."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(
            f"weights file not found: {path} (use --weights imagenet, random, or a state_dict path)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise UsageError(f"cannot load weights from {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return state


def load_model(
    name: str,
    weights: str = "random",
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> LoadedModel:
    """Build a registered model in eval mode with its weights.

    weights: "imagenet" (torchvision's pretrained weights, VGG16 only; downloaded by torchvision),
    "random" (the model's default initialization, seeded by `seed`), or a path to a state_dict
    (loaded with weights_only=True; the class count is read from the classifier's shape).
    """
    spec = get_spec(name)
    if weights == "imagenet":
        if name != "vgg16":
            raise UsageError(f"--weights imagenet exists only for vgg16, not {name}; use random or a path")
        try:
            module = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
        except Exception as err:  # no network, proxy, corrupt cache...
            raise UsageError(
                f"cannot obtain torchvision's VGG16 IMAGENET1K_V1 weights ({err}); download them where the "
                "network allows (torchvision caches them under $TORCH_HOME) or pass --weights PATH"
            ) from err
        classes = 1000
    elif weights == "random":
        classes = num_classes or spec.default_num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = spec.build(classes)
    else:
        state = _load_state_file(Path(weights))
        if spec.logits_weight_key not in state:
            raise UsageError(f"{weights} is not a {name} state_dict: it has no {spec.logits_weight_key!r}")
        classes = int(state[spec.logits_weight_key].shape[0])
        with torch.device("meta"):
            module = spec.build(classes)
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise UsageError(f"{weights} does not match model {name}: {err}") from err
    module.eval().requires_grad_(False).to(device)
    return LoadedModel(
        name=name,
        module=module,
        layers=unit_layers(module, spec),
        weights=weights,
        weights_sha256=state_dict_sha256(module.state_dict()),
        num_classes=classes,
    )
