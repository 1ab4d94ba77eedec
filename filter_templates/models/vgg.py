"""VGG-19, CIFAR form: 16 conv3x3+BN+ReLU, max-pool after layers 2, 4, 8, 12, 16, a global
average pool (the last map is 1x1 at 32 px; larger inputs need it, as the other families have it), one
linear classifier. Every conv is a template layer; there is no stem. 20,040,522 parameters (10 classes).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from filter_templates.models.registry import family

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
        self.pool = nn.AdaptiveAvgPool2d(1)  # a 1x1 map at 32 px (a no-op); larger inputs pool globally
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@family(
    "vgg19",
    base_filters=BASE,
    layer_names=tuple(f"conv{i}" for i in range(1, 17)),
    unit="one 3x3 convolution's output channels",
    description="VGG-19 (CIFAR): 16 conv3x3+BN+ReLU, 5 max-pools, linear classifier",
)
def build(
    filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1, floor: int = 1
) -> nn.Module:
    return VGG(filters, num_classes)  # no stem: stem_width, divisor and floor have nothing to scale
