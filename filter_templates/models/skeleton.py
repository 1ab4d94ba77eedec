"""The CIFAR skeleton ResNet and MobileNet share: conv3x3 stem + BN + ReLU, a sequence of blocks,
global average pool, one linear classifier."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

Blocks = Callable[[int], tuple[list[nn.Module], int]]  # stem width -> (blocks, their output width)


class StemNet(nn.Module):
    """``blocks(stem)`` is called after the stem exists, so parameters initialise in forward order."""

    def __init__(self, stem: int, blocks: Blocks, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, c_out = blocks(stem)
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the originals' avg_pool on the last map, same params
        self.linear = nn.Linear(c_out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(self.pool(y), 1))
