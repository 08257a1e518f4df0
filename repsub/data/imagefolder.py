"""ImageFolder trees (one folder per class, classes indexed in sorted order, as torchvision does).

Images get torchvision's VGG16 evaluation transform scaled to the image size S: resize the
shorter side to round(S * 256 / 224), centre-crop S, normalize with the model's mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from torchvision import datasets, transforms

from ..errors import DataError


def resize_size(image_size: int) -> int:
    return round(image_size * 256 / 224)


def eval_transform(image_size: int, mean, std) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(resize_size(image_size), interpolation=transforms.InterpolationMode.BILINEAR,
                          antialias=True),
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


def image_folder(root: str | Path, image_size: int, mean, std) -> datasets.ImageFolder:
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
            str(root), transform=eval_transform(image_size, mean, std), loader=load_rgb, allow_empty=False
        )
    except FileNotFoundError as err:
        raise DataError(f"--data {root}: {err}") from None
    return dataset
