"""FFCV `.beton` files as an image source for the selectivity pass (written by `repsub prepare`).

The file holds an `image` field (FFCV's RGBImageField) and a `label` field (IntField); the
sidecar `FILE.beton.json` holds the class names in index order and how the file was made.

Decode and crop follow the ImageFolder path as closely as FFCV allows. torchvision resizes the
shorter side to R = round(S * resize / crop) (the model's weights' proportion, 256/224 by default) and
crops S: the centred square of S/R of the shorter side (224/256 for S=224). FFCV's CenterCropRGBImageDecoder takes int(ratio * shorter side) and resizes
that to S (OpenCV INTER_AREA); with ratio (S + 0.5)/R the crop of an image whose shorter side is R
is exactly S (224/256 itself gives 63 px instead of 64 for S=64). The uint8 batch is then converted
and normalized in torch exactly as torchvision's ToTensor and Normalize do. So when the file was
prepared with `--max-resolution R` (256 for S=224), no resize happens and the pixels equal
torchvision's, up to a one-pixel shift of the crop along the longer side for some odd margins
(torchvision rounds half to even, FFCV down).

FFCV quirks handled here: importing ffcv and every Loader set torch's thread count (restored);
batches are views of buffers FFCV reuses (copied out); `Squeeze(1)`, not `Squeeze()`, so a
final batch of one image keeps its batch dimension; normalizing with FFCV's NormalizeImage after
ToTorchImage hangs on CPU (normalization is done in torch instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from repsub.data.imagefolder import CLASSIC_RESIZE, resize_size
from repsub.errors import DataError


def crop_ratio(image_size: int, resize_ratio: tuple[int, int] = CLASSIC_RESIZE) -> float:
    """FFCV's centre-crop ratio for S: S/R of the shorter side (R = round(S * resize / crop)), plus half a
    pixel so that int(ratio * R) is exactly S (FFCV truncates)."""
    return (image_size + 0.5) / resize_size(image_size, resize_ratio)


SIDECAR_FORMAT = "repsub-beton"
IMAGE_FIELD, LABEL_FIELD = "image", "label"


def sidecar_path(beton: str | os.PathLike) -> Path:
    """The JSON sidecar of a .beton: the same name with `.json` appended."""
    return Path(os.fspath(beton) + ".json")


@contextlib.contextmanager
def keep_torch_threads():
    """Restore torch's intra-op thread count after FFCV changes it (on import and in every Loader)."""
    saved = torch.get_num_threads()
    try:
        yield saved
    finally:
        torch.set_num_threads(saved)


def import_ffcv():
    """Import the FFCV pieces used here without letting the import change torch's thread count."""
    with keep_torch_threads():
        import ffcv.fields.decoders as decoders
        import ffcv.loader as loader
        import ffcv.reader as reader
        import ffcv.transforms as transforms
    return decoders, loader, reader, transforms


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar's content, None if there is none; a DataError if it is not repsub's JSON."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        content = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{side}: unreadable sidecar ({err})") from None
    if not isinstance(content, dict) or content.get("format") != SIDECAR_FORMAT:
        raise DataError(f'{side}: not a repsub .beton sidecar (no "format": "{SIDECAR_FORMAT}")')
    return content


def image_pipeline(image_size: int, ratio: float, device: str | torch.device) -> list:
    """FFCV's image pipeline: decode and centre-crop to uint8 [B, S, S, 3]; for a CUDA device, then FFCV's
    ToDevice (a non-blocking copy from FFCV's pinned buffers of uint8, a quarter of float32's bytes):
    normalization then runs on the GPU."""
    decoders, _, _, transforms = import_ffcv()
    pipeline = [
        decoders.CenterCropRGBImageDecoder((image_size, image_size), ratio=ratio),
        transforms.ToTensor(),
    ]
    if torch.device(device).type == "cuda":
        pipeline.append(transforms.ToDevice(torch.device(device), non_blocking=True))
    return pipeline


class BetonSource:
    """A `.beton` file streamed with FFCV's Loader: sequential order, every image, sharded by indices."""

    def __init__(self, path: str | os.PathLike, image_size: int, mean, std, resize_ratio=CLASSIC_RESIZE):
        self.path = os.fspath(path)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize = resize_size(self.image_size, resize_ratio)
        self.ratio = crop_ratio(self.image_size, resize_ratio)
        _, _, reader_module, _ = import_ffcv()
        try:
            reader = reader_module.Reader(self.path)
        except Exception as err:  # FFCV asserts on a bad header, indexes out of range on a short file...
            raise DataError(f"--data {self.path}: not a readable FFCV .beton file ({err})") from None
        kinds = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
        if kinds.get(IMAGE_FIELD) != "RGBImageField" or kinds.get(LABEL_FIELD) != "IntField":
            raise DataError(
                f"--data {self.path}: expected fields image (RGBImageField) and label (IntField), "
                f"found {kinds}; write the file with `repsub prepare`"
            )
        self.num_images = int(reader.num_samples)
        labels = reader.metadata[f"f{reader.field_names.index(LABEL_FIELD)}"]
        self._labels = np.asarray(labels, dtype=np.int64)
        self.sidecar = read_sidecar(self.path)
        if self.sidecar is None:
            # A .beton made elsewhere: classes are named by their index, up to the largest label.
            top = int(labels.max()) if len(labels) else -1
            self.classes = [str(i) for i in range(top + 1)]
            print(
                f"note: {self.path} has no sidecar {sidecar_path(self.path).name}: classes named 0..{top}",
                file=sys.stderr,
            )
        else:
            self.classes = [str(c) for c in self.sidecar["classes"]]
            if int(self.sidecar.get("images", -1)) != self.num_images:
                raise DataError(
                    f"--data {self.path}: holds {self.num_images} images, its sidecar says "
                    f"{self.sidecar.get('images')}: the sidecar belongs to another file"
                )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(
                f"--data {self.path}: labels {labels.min()}..{labels.max()} outside the "
                f"{len(self.classes)} classes of its sidecar"
            )
        self._note_resize()

    def _note_resize(self) -> None:
        """Say when the stored resolution makes FFCV resize the crop (close to, not equal to, ImageFolder)."""
        stored = (self.sidecar or {}).get("options", {}).get("max_resolution")
        wanted = self.resize
        if stored and stored != wanted:
            print(
                f"note: {self.path} stores images with shorter side <= {stored} px; for S={self.image_size} "
                f"the centre crop ({self.ratio:.4f} of the shorter side) is resized to {self.image_size} px "
                "by FFCV (INTER_AREA), "
                f"close to but not equal to the ImageFolder path (prepare with --max-resolution {wanted} "
                "for an exact match)",
                file=sys.stderr,
            )

    def __len__(self) -> int:
        return self.num_images

    def _loader(self, batch_size: int, indices: np.ndarray, workers: int, device: torch.device):
        decoders, loader_module, _, transforms = import_ffcv()
        pipeline = image_pipeline(self.image_size, self.ratio, device)
        label_pipeline = [decoders.IntDecoder(), transforms.ToTensor(), transforms.Squeeze(1)]
        import numba

        threads = max(1, min(int(workers), numba.config.NUMBA_NUM_THREADS))  # numba refuses more
        return loader_module.Loader(
            self.path,
            batch_size=batch_size,
            num_workers=threads,
            order=loader_module.OrderOption.SEQUENTIAL,
            drop_last=False,
            indices=indices,  # sharding by index; never distributed=True, which pads with duplicates
            pipelines={IMAGE_FIELD: pipeline, LABEL_FIELD: label_pipeline},
        )

    def batches(
        self,
        batch_size: int,
        indices: Sequence[int] | None = None,
        workers: int = 2,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images [B, 3, S, S] float32 normalized on `device`, labels [B] int64 on the CPU), in the order
        of `indices` (default: the whole file), every image once, copied out of FFCV's buffers."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.arange(self.num_images) if indices is None else np.asarray(list(indices), dtype=np.int64)
        if order.size and (order.min() < 0 or order.max() >= self.num_images):
            raise DataError(
                f"{self.path}: indices {order.min()}..{order.max()} outside the file's {self.num_images} images"
            )
        if order.size == 0:
            return
        device = torch.device(device)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        seen = 0
        with keep_torch_threads() as threads:
            loader = self._loader(batch_size, order.astype(np.uint64), workers, device)
            iterator = iter(loader)
            try:
                for number, (images, labels) in enumerate(iterator):
                    if number == 0:
                        # The loader's thread sets torch's thread count before its first batch: undo it.
                        torch.set_num_threads(threads)
                    # torchvision's ToTensor + Normalize, same float32 operations: uint8 -> /255 -> -mean -> /std.
                    # The conversion copies the batch out of FFCV's buffer (NCHW contiguous, as ImageFolder's).
                    images = images.permute(0, 3, 1, 2).to(
                        torch.float32, memory_format=torch.contiguous_format
                    )
                    images = images.div_(255).sub_(mean).div_(std)
                    labels = labels.to(torch.int64, copy=True)
                    seen += len(labels)
                    yield images, labels
            finally:
                iterator.close()
        if seen != order.size:
            raise DataError(f"{self.path}: the loader yielded {seen} images, {order.size} were asked for")

    def labels(self) -> np.ndarray:
        """Every image's class index, in file order (read from FFCV's metadata: no image is decoded)."""
        return self._labels

    def describe(self) -> dict:
        """What the manifest records about the data."""
        sidecar = self.sidecar or {}
        return {
            "kind": "beton",
            "path": str(Path(self.path).absolute()),
            "images": self.num_images,
            "classes": self.classes,
            "image_size": self.image_size,
            "resize": self.resize,
            "decode": f"FFCV CenterCropRGBImageDecoder ratio {self.ratio:.6f} to S (INTER_AREA), normalized in torch",
            "sidecar": {key: sidecar.get(key) for key in ("options", "source", "created_at", "repsub")}
            if sidecar
            else None,
        }
