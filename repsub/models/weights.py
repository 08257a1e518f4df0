"""Weights: what `--weights` names, the preprocessing that belongs to them, and their content hash.

`--weights` is one of
- `random`: the architecture's default initialization, seeded by `--seed`;
- `DEFAULT` or a member of the model's torchvision weights enum (`IMAGENET1K_V1`, `IMAGENET1K_SWAG_E2E_V1`),
  built through torchvision's weights API, which reads torchvision's cache under $TORCH_HOME (and downloads
  there only where the network allows);
- `imagenet`: an alias of the model's ImageNet default (torchvision's DEFAULT; IMAGENET1K_V1 for vgg16);
- anything else: the path of a state_dict file (loaded with weights_only=True).

A model's identity is the content of its weights (`state_dict_sha256`), never the path they came from.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import torch

from repsub.errors import UsageError, cut, shown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a model: resize the shorter side to `resize_size`, centre-crop
    `image_size`, normalize. At another image size S the resize keeps the proportion (S * resize / crop)."""

    image_size: int  # the model's input side (torchvision: the weights' crop_size)
    resize_size: int  # shorter side before the crop, at image_size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = "repsub default (torchvision's classic evaluation transform: resize 256, crop 224)"

    @property
    def resize_ratio(self) -> tuple[int, int]:
        """(resize, crop): the shorter side is resized to round(S * resize / crop) before an S px crop."""
        ratio = Fraction(self.resize_size, self.image_size)
        return ratio.numerator, ratio.denominator

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def classic(cls, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, source: str | None = None):
        """Resize round(S * 256 / 224), crop S: torchvision's evaluation transform of VGG and ResNet V1."""
        return cls(image_size, round(Fraction(image_size * 256, 224)), tuple(mean), tuple(std),
                   source or cls.source)  # fmt: skip


def weights_preprocessing(weights) -> Preprocessing:
    """The preprocessing of a torchvision weights enum member, from its own `transforms` (ImageClassification:
    crop_size, resize_size, mean, std). Interpolation is left out: repsub's ImageFolder and .beton paths both
    resize bilinearly."""
    preset = weights.transforms()

    def first(value):
        return value[0] if isinstance(value, list | tuple) else value

    return Preprocessing(
        image_size=int(first(preset.crop_size)),
        resize_size=int(first(preset.resize_size)),
        mean=tuple(float(m) for m in preset.mean),
        std=tuple(float(s) for s in preset.std),
        source=f"torchvision {type(weights).__name__}.{weights.name}",
    )


@dataclass(frozen=True)
class WeightsChoice:
    """What `--weights` asked for: "random", a torchvision enum member, or a file."""

    text: str  # as given
    enum: object | None = None  # a torchvision WeightsEnum member
    path: Path | None = None

    @property
    def random(self) -> bool:
        return self.enum is None and self.path is None


def weights_names(weights_enum) -> list[str]:
    """The names `--weights` takes from a torchvision enum: DEFAULT first, then its members."""
    if weights_enum is None:
        return []
    return ["DEFAULT", *(name for name in weights_enum.__members__ if name != "DEFAULT")]


def parse_weights(model: str, text: str | None, weights_enum=None) -> WeightsChoice:
    """Read `--weights` for `model` (`weights_enum`: its torchvision enum class; None for the paper's models)."""
    text = "random" if text in (None, "") else str(text)
    if text == "random":
        return WeightsChoice(text)
    names = weights_names(weights_enum)
    if text == "imagenet" and weights_enum is not None:
        return WeightsChoice(text, enum=weights_enum["DEFAULT"])
    if text in names:
        return WeightsChoice(text, enum=weights_enum[text])
    path = Path(text)
    if path.is_file():
        return WeightsChoice(text, path=path)
    if path.is_dir():
        raise UsageError(
            f"--weights {shown(text)} is a directory, not a state_dict file: give the file's path"
        )
    valid = ", ".join(["random", *(["imagenet", *names] if names else []), "or a state_dict path"])
    if text == "imagenet" or (text.isupper() and not any(c in text for c in "./\\")):
        raise UsageError(f"{model} has no weights {text!r}; valid weights for {model}: {valid}")
    raise UsageError(f"weights file not found: {shown(text)[1:-1]} (valid weights for {model}: {valid})")


def state_dict_sha256(state: dict) -> str:
    """A hash of the weights themselves (names, dtypes, shapes and bytes), independent of the file. Every
    entry counts: 0-d tensors (BatchNorm's num_batches_tracked), buffers, and non-tensor extra state (by repr)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            digest.update(f"{key}|{type(value).__name__}|{value!r}|".encode())
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise UsageError(f"cannot load weights from {path}: the file is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused what the file would build, or garbage
        if "Unsupported global" not in str(err):
            raise UsageError(
                f"cannot load weights from {path}: not a file torch.save wrote (unreadable)"
            ) from None
        raise UsageError(
            f"cannot load weights from {path}: not a plain state_dict, refused for safety: it asks to build "
            f"Python objects beyond tensors ({_refused_global(str(err))}). Save the model's "
            "state_dict() alone (torch.save(model.state_dict(), path))"
        ) from None
    except Exception as err:  # torch raises several types for a bad file
        raise UsageError(f"cannot load weights from {path}: {cut(_first_line(err), 200)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return as_float32(state, path)


def _refused_global(text: str) -> str:
    """What torch's safe loader refused ("GLOBAL builtins.print"), without its advice: the advice to load with
    weights_only=False would run the file's code."""
    match = re.search(r"Unsupported global: (GLOBAL \S+)", text)
    return cut(match.group(1), 80) if match else "an object that is not a tensor"


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else type(err).__name__


def as_float32(state: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """Floating-point weights in float32, the precision repsub computes and records in (a half-precision or
    float64 checkpoint is converted, with a note: float16/bfloat16 exactly, float64 rounded). The weights hash
    is that of the converted weights, the ones used. Complex weights are refused."""
    complex_keys = [key for key, value in state.items() if value.is_complex()]
    if complex_keys:
        raise UsageError(f"{path}: complex-valued weights ({', '.join(complex_keys[:3])}) are not supported")
    other = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()
                    if v.is_floating_point() and v.dtype != torch.float32})  # fmt: skip
    if not other:
        return state
    _note_conversion(str(path), ", ".join(other))
    return {key: v.float() if v.is_floating_point() else v for key, v in state.items()}


@functools.lru_cache(maxsize=64)
def _note_conversion(path: str, dtypes: str) -> None:  # once per file and process
    rounded = " (float64 rounded)" if "float64" in dtypes else ""
    print(f"note: {path} holds {dtypes} weights; using them as float32{rounded}", file=sys.stderr)
