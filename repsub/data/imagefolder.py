"""ImageFolder trees (one folder per class, classes indexed in sorted order, as torchvision does).

Images get the evaluation transform of the model's weights scaled to the image size S: resize the
shorter side to round(S * resize / crop), centre-crop S, normalize with the weights' mean and std.
(resize, crop) is the weights' own (232/224 for ResNet-50's IMAGENET1K_V2); (256, 224), torchvision's
classic VGG/ResNet transform, where the weights say nothing (the paper's models, a custom module).
The resize is bilinear (antialiased) for every model: the .beton path (repsub.data.beton) mirrors it.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from PIL import Image
from torchvision import datasets, transforms

from repsub.errors import DataError

CLASSIC_RESIZE = (256, 224)  # (resize, crop): torchvision's evaluation transform of VGG16 and ResNet V1


def resize_size(image_size: int, resize_ratio: tuple[int, int] = CLASSIC_RESIZE) -> int:
    """The shorter side before an S px centre crop: round(S * resize / crop), exactly (ties to even)."""
    resize, crop = resize_ratio
    return round(Fraction(image_size * resize, crop))


def eval_transform(
    image_size: int, mean, std, resize_ratio: tuple[int, int] = CLASSIC_RESIZE
) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(resize_size(image_size, resize_ratio),
                          interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])  # fmt: skip


class UnreadableImageError(DataError):
    """An image file that PIL cannot decode; the message names it."""


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB, naming the file when it cannot be read (truncated, not an image...)."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise UnreadableImageError(f"unreadable image {path}: {err}") from None


class VisibleImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder without hidden folders (`.ipynb_checkpoints`...), which it would count
    as classes, shifting every class index after them; `repsub prepare` skips them the same way."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}


def image_folder(
    root: str | Path, image_size: int, mean, std, resize_ratio: tuple[int, int] = CLASSIC_RESIZE
) -> datasets.ImageFolder:
    """An ImageFolder with the evaluation transform; refuses a missing, empty or one-class tree."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: not a directory (expected an ImageFolder: one folder per class)")
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(
            f"--data {root}: found {len(class_dirs)} class folder(s); selectivity needs two classes "
            "or more (an ImageFolder has one sub-folder of images per class)"
        )
    try:
        dataset = VisibleImageFolder(
            str(root),
            transform=eval_transform(image_size, mean, std, resize_ratio),
            loader=load_rgb,
            allow_empty=False,
        )
    except FileNotFoundError as err:
        raise DataError(f"--data {root}: {err}") from None
    return dataset
