"""Thumbnails of chosen images of a data source, as the model saw them (after resize and centre crop).

Read through the source's own `batches` (ImageFolder or .beton alike), un-normalized with the model's
mean and std, scaled to THUMBNAIL_SIDE (never up) and encoded as JPEG: the exemplars' images
(repsub.runstore.exemplars), a few KB each.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

THUMBNAIL_SIDE = 64
JPEG_QUALITY = 90


def to_uint8(images: torch.Tensor, mean, std, side: int) -> np.ndarray:
    """Normalized [B, 3, S, S] -> uint8 [B, s, s, 3] with s = min(side, S) (antialiased downscale)."""
    images = images.detach().to("cpu", torch.float32)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    images = (images * std + mean).clamp(0, 1)
    if images.shape[-1] > side:
        images = F.interpolate(
            images, size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )
    return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def read_thumbnails(
    source,
    indices: Sequence[int],
    mean,
    std,
    side: int = THUMBNAIL_SIDE,
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[bytes]]]:
    """(image indices, labels, JPEG bytes) per batch of the images `indices` (sorted, distinct) of `source`."""
    order = np.asarray(indices, dtype=np.int64)
    start = 0
    with tqdm(total=len(order), desc="exemplar thumbnails", unit="img", disable=not progress) as bar:
        for images, labels in source.batches(batch_size, indices=order.tolist(), workers=workers):
            count = len(labels)
            pixels = to_uint8(images, mean, std, side)
            yield order[start : start + count], labels.numpy(), [jpeg_bytes(p) for p in pixels]
            start += count
            bar.update(count)
