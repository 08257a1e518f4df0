"""Generated ImageFolder data with class-dependent structure, for the demo and the tests (no download).

Each class has its own colour, stripe orientation and frequency, and the position of a bright
disc; each image draws a random phase, offsets and pixel noise. A small CNN learns the classes
in a few epochs, so its units become class selective as a trained network's do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

GENERATOR_VERSION = 1
# What `--data` and a sweep config's `selectivity.data` take for the demo's held-out images (generated on
# first use in the cache, identically on every machine). A directory of that name is given as `./demo`.
DEMO_DATA = "demo"


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


def default_cache_dir() -> Path:
    """Where repsub keeps generated and staged data: $REPSUB_CACHE, else ~/.cache/repsub."""
    return Path(os.environ.get("REPSUB_CACHE") or Path.home() / ".cache" / "repsub").expanduser()


def cached_demo_data(
    cache_dir: str | Path | None = None,
    num_classes: int = 10,
    train_per_class: int = 60,
    val_per_class: int = 30,
    size: int = 36,
) -> tuple[Path, Path]:
    """The demo's train and val ImageFolders, generated once under `cache_dir` (default: default_cache_dir()),
    regenerated if the arguments or the generator changed. Made under a temporary name and renamed into
    place, so processes that need it at the same time (a sweep's workers) never see it half-written."""
    key = {
        "version": GENERATOR_VERSION,
        "classes": num_classes,
        "train": train_per_class,
        "val": val_per_class,
        "size": size,
    }
    parent = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = parent / "demo-data"
    if not _complete(root, key):
        staging = parent / f".demo-data-{uuid.uuid4().hex}"
        try:
            make_image_folder(staging / "train", num_classes, train_per_class, size, seed=1)
            make_image_folder(staging / "val", num_classes, val_per_class, size, seed=2)
            (staging / "complete.json").write_text(json.dumps(key))
            _move_into_place(staging, root, key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root / "train", root / "val"


def _complete(root: Path, key: dict) -> bool:
    stamp = root / "complete.json"
    try:
        return json.loads(stamp.read_text()) == key
    except (OSError, ValueError):
        return False


def _move_into_place(staging: Path, root: Path, key: dict) -> None:
    """Rename `staging` to `root`, replacing an outdated `root`; if another process put a complete copy there
    first, keep that one (both are the same images)."""
    for _ in range(3):
        try:
            os.rename(staging, root)  # fails while `root` exists and is not empty
            return
        except OSError:
            if _complete(root, key):
                return
            aside = root.with_name(f".demo-data-old-{uuid.uuid4().hex}")
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.rename(root, aside)
            shutil.rmtree(aside, ignore_errors=True)
    os.rename(staging, root)


def demo_val_dir() -> Path:
    """The demo's held-out images (what DEMO_DATA names), generated first if needed."""
    return cached_demo_data()[1]
