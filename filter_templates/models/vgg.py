"""VGG-19, CIFAR form: 16 conv3x3+BN+ReLU, max-pool after layers 2, 4, 8, 12, 16, one linear
classifier. Every conv is a template layer; there is no stem. 20,040,522 parameters (10 classes).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from . import Family, register_family

BASE = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
POOL_AFTER = frozenset({2, 4, 8, 12, 16})  # 1-based layer indices


class VGG(nn.Module):
    def __init__(self, filters: Sequence[int], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(filters, start=1):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build(filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1,
          floor: int = 1) -> nn.Module:
    return VGG(filters, num_classes)  # no stem: stem_width, divisor and floor have nothing to scale


FAMILY = register_family(
    Family(
        name="vgg19",
        base_filters=BASE,
        layer_names=tuple(f"conv{i}" for i in range(1, 17)),
        builder=build,
        unit="one 3x3 convolution's output channels",
        description="VGG-19 (CIFAR): 16 conv3x3+BN+ReLU, 5 max-pools, linear classifier",
    )
)
