"""Random robustness transforms: a translation, scaling and rotation drawn independently per image and step.

All draws for a unit are made up front from that unit's generator, so a unit's transforms do
not depend on its batch; at each step the whole batch is warped at once with one ``grid_sample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RandomAffine:
    """Per-image random affine warps. jitter: max shift as a fraction of the image side; scale: max
    relative zoom (factor in [1 - scale, 1 + scale]); rotate: max angle in degrees."""

    def __init__(
        self,
        generators: list[torch.Generator],
        steps: int,
        jitter: float,
        scale: float,
        rotate: float,
        device: torch.device,
    ):
        draws = torch.stack([torch.rand(steps, 4, generator=g, dtype=torch.float64) for g in generators])
        u = draws * 2 - 1  # [B, steps, 4] uniform in [-1, 1)
        zoom = 1 + scale * u[..., 2]
        angle = math.radians(rotate) * u[..., 3]
        shift_x, shift_y = 2 * jitter * u[..., 0], 2 * jitter * u[..., 1]  # grid coordinates span 2
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack([torch.stack([cos, -sin, shift_x], -1), torch.stack([sin, cos, shift_y], -1)], -2)
        self.theta = theta.to(torch.float32).to(device)  # [B, steps, 2, 3]
        self.enabled = jitter > 0 or scale > 0 or rotate > 0

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        if not self.enabled:
            return images
        grid = F.affine_grid(self.theta[:, step], list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
