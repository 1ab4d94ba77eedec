"""ResNet-50, CIFAR form: conv3x3(64)+BN+ReLU stem, bottleneck stages of 3, 4, 6, 3 blocks with
planes 64/128/256/512 (stride 2 at the first block of stages 2-4), expansion 4, global average
pool, one linear classifier. 23,520,842 parameters (10 classes).

Two readings of "template layer":

- ``resnet50`` (the study's): one template layer per *stage*, counted by its ``planes``;
  every block of the stage uses it, and the stem convolution takes the first stage's value (the
  study's ``conv1`` is ``cfg[0]`` wide): 64 for base, 512 for reverse.
- ``resnet50-blocks``: one template layer per bottleneck block; the stem (64) is scaled by
  ``stem_width``.

A block's output is ``4 * planes``. A projection shortcut (1x1 conv + BN) appears wherever a
block's input and output widths differ or it downsamples; elsewhere the shortcut is the identity.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from filter_templates.core.scaling import scale_count
from filter_templates.models.registry import family
from filter_templates.models.skeleton import StemNet

EXPANSION = 4
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks)
BASE = tuple(planes for planes, blocks in STAGES for _ in range(blocks))
STEM = 64
# 0-based indices of the blocks that downsample: the first block of stages 2-4.
STRIDE2 = frozenset({3, 7, 13})


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class ResNet(StemNet):
    def __init__(self, filters: Sequence[int], num_classes: int = 10, stem: int = STEM) -> None:
        def blocks(c_in: int) -> tuple[list[nn.Module], int]:
            out: list[nn.Module] = []
            for i, planes in enumerate(filters):
                out.append(Bottleneck(c_in, planes, 2 if i in STRIDE2 else 1))
                c_in = EXPANSION * planes
            return out, c_in

        super().__init__(stem, blocks, num_classes)


@family(
    "resnet50",
    base_filters=tuple(planes for planes, _ in STAGES),
    layer_names=("stage1", "stage2", "stage3", "stage4"),
    unit="stage's planes (every block of the stage; output 4x planes; the stem takes stage 1's value)",
    description="ResNet-50 (CIFAR): conv3x3 stem, bottleneck stages 3-4-6-3, linear classifier; "
    "one template layer per stage (the study's reading)",
)
def build_stages(
    filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1, floor: int = 1
) -> nn.Module:
    blocks = [planes for planes, (_, n) in zip(filters, STAGES) for _ in range(n)]
    return ResNet(blocks, num_classes, stem=filters[0])


@family(
    "resnet50-blocks",
    base_filters=BASE,
    layer_names=tuple(f"s{s}b{b}" for s, (_, n) in enumerate(STAGES, start=1) for b in range(1, n + 1)),
    unit="bottleneck block's planes (its output is 4x planes)",
    description="ResNet-50 (CIFAR): conv3x3 stem, 16 bottleneck blocks in stages 3-4-6-3, linear classifier; "
    "one template layer per block",
)
def build(
    filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1, floor: int = 1
) -> nn.Module:
    return ResNet(filters, num_classes, stem=scale_count(STEM, stem_width, floor=floor, divisor=divisor))
