"""Image sources for the selectivity pass: what `--data` points at, chosen by what the path is.

A source knows its classes and size and yields batches of normalized images with labels, in
dataset order, optionally over a subset of indices (a data shard): every source shards the same
way, so partial sums from shards merge into exactly the single pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from repsub.data.imagefolder import CLASSIC_RESIZE, image_folder, resize_size
from repsub.errors import DataError
from repsub.runstore.storage import check_location


class ImageSource(Protocol):
    path: str
    classes: list[str]

    def __len__(self) -> int: ...

    def batches(
        self,
        batch_size: int,
        indices: Sequence[int] | None = None,
        workers: int = 2,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images [B, 3, S, S] normalized, on `device`; labels [B] int64) in index order, no image dropped."""
        ...

    def labels(self) -> np.ndarray:
        """Every image's class index, in dataset order, without decoding images."""
        ...

    def describe(self) -> dict:
        """What the manifest records about the data."""
        ...


class ImageFolderSource:
    """An ImageFolder tree read with torchvision and a DataLoader."""

    def __init__(self, root: str | os.PathLike, image_size: int, mean, std, resize_ratio=CLASSIC_RESIZE):
        self.path = os.fspath(root)
        self.dataset = image_folder(root, image_size, mean, std, resize_ratio)
        self.classes = list(self.dataset.classes)
        self.image_size = image_size
        self.resize = resize_size(image_size, resize_ratio)

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self, batch_size, indices=None, workers=2, device="cpu") -> torch.utils.data.DataLoader:
        """For a CUDA device, batches in pinned memory: `batches` copies them without blocking."""
        dataset = self.dataset if indices is None else torch.utils.data.Subset(self.dataset, list(indices))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=workers,
            pin_memory=torch.device(device).type == "cuda",
        )

    def batches(self, batch_size, indices=None, workers=2, device="cpu"):
        try:
            for images, labels in self.loader(batch_size, indices, workers, device):
                yield images.to(device, non_blocking=True), labels
        except DataError as err:  # from a worker process: the same message as without workers
            raise type(err)(worker_message(err)) from None

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.targets, dtype=np.int64)

    def describe(self) -> dict:
        return {
            "kind": "imagefolder",
            "path": self.path,
            "images": len(self),
            "classes": self.classes,
            "image_size": self.image_size,
            "resize": self.resize,  # shorter side before the centre crop (the model's weights' proportion)
        }


class StagedSource:
    """A source read from a local copy of a remote file; the manifest records where the copy came from."""

    def __init__(self, local: ImageSource, origin: dict):
        self._local = local
        self.origin = origin

    def __getattr__(self, name):
        return getattr(self._local, name)

    def __len__(self) -> int:
        return len(self._local)

    def describe(self) -> dict:
        return {**self._local.describe(), "staged_from": self.origin}


def open_source(
    path: str | os.PathLike, image_size: int, mean, std, resize_ratio: tuple[int, int] = CLASSIC_RESIZE
) -> ImageSource:
    """An ImageFolder directory or an FFCV `.beton` file (local, or on S3: staged to a local cache);
    anything else is refused with what was expected. `resize_ratio` (resize, crop) and mean/std are the
    model's preprocessing (LoadedModel.resize_ratio, .mean, .std). `demo` names the demo's generated held-out
    images (repsub.data.synthetic.DEMO_DATA), made on first use in each machine's cache, the same everywhere."""
    text = os.fspath(path)
    check_location(text, "--data")  # before any message repeats it: a URI may carry credentials
    from repsub.data.synthetic import DEMO_DATA, demo_val_dir

    if text == DEMO_DATA:
        path = text = os.fspath(demo_val_dir())
    if text.startswith("s3://"):
        if not text.endswith(".beton"):
            raise DataError(
                f"--data {text}: only .beton files can be read from S3 (ImageFolders must be local)"
            )
        from repsub.data.beton import BetonSource
        from repsub.data.staging import stage_beton

        local, etag = stage_beton(text)
        return StagedSource(
            BetonSource(local, image_size, mean, std, resize_ratio), {"uri": text, "etag": etag}
        )
    location = Path(path)
    if location.is_dir():
        return ImageFolderSource(location, image_size, mean, std, resize_ratio)
    if location.is_file() and location.suffix == ".beton":
        from repsub.data.beton import BetonSource  # FFCV is imported only when a .beton is used

        return BetonSource(location, image_size, mean, std, resize_ratio)
    if not location.exists():
        raise DataError(
            f"--data {location}: no such file or directory (expected an ImageFolder directory or a "
            ".beton file)"
        )
    raise DataError(f"--data {location}: not an ImageFolder directory or a .beton file")


def worker_message(err: Exception) -> str:
    """A DataLoader worker's exception is raised again with the worker's traceback as its message; the message
    of the exception itself ends that traceback, after its class name."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.partition(f"{type(err).__name__}: ")[2] or last
