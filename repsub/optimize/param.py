"""Image parameterizations: a batch of images, one per unit, each initialized from its own generator.

- ``pixel``: free pixels, squashed into [0, 1] with a sigmoid.
- ``fourier``: Lucid's parameterization, the image's 2-D spectrum scaled by 1/frequency (so the
  optimizer favours low frequencies), then a fixed linear map that decorrelates colour (the
  square root of ImageNet's colour covariance, normalized), then a sigmoid.

Each image's initial values come only from its own generator, so an image does not depend on the
other images of its batch.
"""

from __future__ import annotations

import torch
from torch import nn

# sqrt of ImageNet's RGB covariance (from its SVD), as published with Lucid; columns normalized below.
_COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_DECORRELATION = _COLOR_CORRELATION_SQRT / _COLOR_CORRELATION_SQRT.norm(dim=0).max()


def _draw(generators: list[torch.Generator], shape: tuple[int, ...], sd: float) -> torch.Tensor:
    # Drawn on the CPU from per-unit generators, so the start is the same on every device.
    return torch.stack([torch.randn(shape, generator=g) for g in generators]) * sd


class PixelImage(nn.Module):
    def __init__(self, generators: list[torch.Generator], size: int, device: torch.device, sd: float = 0.01):
        super().__init__()
        self.logits = nn.Parameter(_draw(generators, (3, size, size), sd).to(device))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class FourierImage(nn.Module):
    def __init__(
        self,
        generators: list[torch.Generator],
        size: int,
        device: torch.device,
        sd: float = 0.01,
        decay_power: float = 1.0,
    ):
        super().__init__()
        self.size = size
        freqs = torch.sqrt(torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.rfftfreq(size)[None, :] ** 2)
        self.register_buffer("scale", (1.0 / freqs.clamp(min=1.0 / size) ** decay_power).to(device))
        self.spectrum = nn.Parameter(_draw(generators, (3, size, size // 2 + 1, 2), sd).to(device))
        self.register_buffer("decorrelation", _COLOR_DECORRELATION.to(device))

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", self.decorrelation, image))


PARAMETERIZATIONS = {"pixel": PixelImage, "fourier": FourierImage}
