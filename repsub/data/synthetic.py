"""Generated ImageFolder data with class-dependent structure, for the demo and the tests (no download).

Each class has its own colour, stripe orientation and frequency, and the position of a bright
disc; each image draws a random phase, offsets and pixel noise. A small CNN learns the classes
in a few epochs, so its units become class selective as a trained network's do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

GENERATOR_VERSION = 1


def _class_style(index: int, num_classes: int) -> dict:
    rng = np.random.default_rng(1000 + index)
    return {
        "colour": rng.uniform(0.15, 1.0, size=3),
        "angle": np.pi * index / num_classes,
        "frequency": 2.0 + 4.0 * rng.uniform(),
        "disc": rng.uniform(0.25, 0.75, size=2),
    }


def _render(style: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    along = np.cos(style["angle"]) * x + np.sin(style["angle"]) * y
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * style["frequency"] * along + rng.uniform(0, 2 * np.pi))
    cy, cx = style["disc"] + rng.normal(0, 0.05, size=2)
    disc = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.08**2))
    image = stripes[..., None] * style["colour"] * 0.8 + disc[..., None] * 0.6
    image += rng.normal(0, 0.08, size=image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_image_folder(
    root: str | Path,
    num_classes: int = 10,
    images_per_class: int = 40,
    size: int = 36,
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write `root/class_XX/img_YYYY.<fmt>`; returns root. Deterministic for the same arguments."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        style = _class_style(c, num_classes)
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            Image.fromarray(_render(style, size, rng)).save(folder / f"img_{i:04d}.{fmt}")
    return root


def cached_demo_data(
    cache_dir: str | Path,
    num_classes: int = 10,
    train_per_class: int = 60,
    val_per_class: int = 30,
    size: int = 36,
) -> tuple[Path, Path]:
    """The demo's train and val ImageFolders, generated once under `cache_dir` (regenerated if the
    arguments or the generator changed, or a previous generation was interrupted)."""
    key = {
        "version": GENERATOR_VERSION,
        "classes": num_classes,
        "train": train_per_class,
        "val": val_per_class,
        "size": size,
    }
    root = Path(cache_dir) / "demo-data"
    stamp = root / "complete.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key):
        shutil.rmtree(root, ignore_errors=True)
        make_image_folder(root / "train", num_classes, train_per_class, size, seed=1)
        make_image_folder(root / "val", num_classes, val_per_class, size, seed=2)
        stamp.write_text(json.dumps(key))  # written last: its presence means the data is whole
    return root / "train", root / "val"
