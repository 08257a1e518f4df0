"""The paper's own models (arXiv 1811.11053): a shallow CNN and an MLP, trained by `repsub train`."""

from __future__ import annotations

import torch
from torch import nn

from repsub.models.catalogs import relu_sequence
from repsub.models.registry import ModelSpec, register_model
from repsub.models.weights import Preprocessing


class ShallowCNN(nn.Module):
    """The paper's shallow CNN: conv 64, 64, 128, 128 (3x3, stride 1), a fully connected layer, the classifier.

    Max pooling after the second and fourth convolutions and an adaptive average pool to 4x4 make
    it accept any image size of 4 px or more (the paper trains it on 32 px CIFAR-10 images).
    """

    def __init__(self, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(128 * 4 * 4, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MLP(nn.Module):
    """The paper's MLP: hidden layers of 128, 512, 2048 and 2048 units on the flattened image, then the classifier.

    The input is resized to 32x32 first, so any image size is accepted.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        self.input_size = input_size
        widths = [3 * input_size * input_size, 128, 512, 2048, 2048]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(resized(x, self.input_size), 1))


@torch.fx.wrap  # one opaque step in a torch.fx trace: its test of the shape cannot be traced
def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """`images` resized to size x size (bilinear, antialiased) unless they are that size already."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


register_model(ModelSpec(
    name="shallow_cnn", build=lambda classes, _variant: ShallowCNN(classes), rule=relu_sequence("flat"),
    preprocessing=Preprocessing.classic(32), num_classes=10, family="paper",
    description="the paper's shallow CNN: conv 64,64,128,128, fc 128, classifier",
))  # fmt: skip
register_model(ModelSpec(
    name="mlp", build=lambda classes, _variant: MLP(classes), rule=relu_sequence("flat"),
    preprocessing=Preprocessing.classic(32), num_classes=10, family="paper",
    description="the paper's MLP: 128, 512, 2048, 2048, classifier",
))  # fmt: skip
