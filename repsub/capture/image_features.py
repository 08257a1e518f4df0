"""Feature vectors of stored images in one layer of a model: the layer's units, conv maps mean-pooled over
space (repsub.capture.reader), for the `features` similarity of the interpretability index.

Images come as thumbnails ([B, H, W, 3] in [0, 1], as the model saw them, scaled down): they are resized
(bilinear) to `image_size` and normalized with the model's mean and std, then read in float32 in batches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from repsub.capture.reader import LayerCapture
from repsub.models import LoadedModel, UnitLayer


@torch.no_grad()
def layer_features(model: LoadedModel, layer: UnitLayer, images: np.ndarray, image_size: int,
                   batch_size: int = 64, device: str = "cpu", progress: bool = False) -> np.ndarray:  # fmt: skip
    """[B, H, W, 3] in [0, 1] -> [B, units] float32: the layer's spatially mean-pooled activations."""
    model.module.to(device)
    mean = torch.tensor(model.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    parts = []
    with LayerCapture(model.module, [layer], reduce="mean") as capture:
        for start in tqdm(range(0, len(images), batch_size), desc=f"features {model.name} {layer.name}",
                          unit="batch", disable=not progress):  # fmt: skip
            chunk = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
            x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2)
            if x.shape[-2:] != (image_size, image_size):
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
            units = capture((x - mean) / std).activations[layer.name]
            parts.append(units.float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, layer.n_units), np.float32)
