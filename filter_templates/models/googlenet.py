"""GoogLeNet, CIFAR form: conv3x3(192)+BN+ReLU stem, Inception modules a3 b3 (max-pool) a4 b4 c4
d4 e4 (max-pool) a5 b5, global average pool, one linear classifier; the 5x5 branch is two 3x3
convs and every conv has a bias, BN and ReLU. 6,166,250 parameters (10 classes).

One template layer is one Inception module, counted by its output channels (the sum of its four
branch outputs: 256 480 512 512 512 528 832 832 1024). A module given ``f'_l`` instead of its base
``f_l`` scales EVERY inner width (the four branch outputs and the two 1x1 "reduce" widths) by
``f'_l / f_l`` with the templates' rounding (``scale_count``). The module's real output is the sum
of its four rounded branches, so it can differ from ``f'_l`` by a few channels of rounding; the
next module takes that realised width as its input (``GoogLeNet.outputs`` lists them). At base
counts the model is exactly the original. The stem (192) is scaled by ``stem_width``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from ..templates import scale_count
from . import Family, register_family


class Widths(NamedTuple):
    """Inner widths of one Inception module, in the original paper's order."""

    n1x1: int
    n3x3red: int
    n3x3: int
    n5x5red: int
    n5x5: int
    pool_planes: int

    @property
    def out(self) -> int:
        return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_planes


NAMES = ("a3", "b3", "a4", "b4", "c4", "d4", "e4", "a5", "b5")
MODULES = (
    Widths(64, 96, 128, 16, 32, 32),
    Widths(128, 128, 192, 32, 96, 64),
    Widths(192, 96, 208, 16, 48, 64),
    Widths(160, 112, 224, 24, 64, 64),
    Widths(128, 128, 256, 24, 64, 64),
    Widths(112, 144, 288, 32, 64, 64),
    Widths(256, 160, 320, 32, 128, 128),
    Widths(256, 160, 320, 32, 128, 128),
    Widths(384, 192, 384, 48, 128, 128),
)
BASE = tuple(m.out for m in MODULES)
STEM = 192
POOL_AFTER = frozenset({1, 6})  # 0-based: after b3 and after e4


def scaled_widths(base: Widths, count: int, divisor: int = 1, floor: int = 1) -> Widths:
    """The inner widths of a module whose template count is ``count`` instead of ``base.out``."""
    ratio = count / base.out
    return Widths(*(scale_count(w, ratio, floor=floor, divisor=divisor) for w in base))


def _cbr(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    def __init__(self, in_planes: int, w: Widths) -> None:
        super().__init__()
        self.widths = w
        self.out_channels = w.out
        self.b1 = nn.Sequential(*_cbr(in_planes, w.n1x1, 1))
        self.b2 = nn.Sequential(*_cbr(in_planes, w.n3x3red, 1), *_cbr(w.n3x3red, w.n3x3, 3))
        self.b3 = nn.Sequential(*_cbr(in_planes, w.n5x5red, 1), *_cbr(w.n5x5red, w.n5x5, 3), *_cbr(w.n5x5, w.n5x5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_cbr(in_planes, w.pool_planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, filters: Sequence[int], num_classes: int = 10, stem: int = STEM, divisor: int = 1,
                 floor: int = 1) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*_cbr(3, stem, 3))
        layers: list[nn.Module] = []
        outputs = []
        c_in = stem
        for i, (base, count) in enumerate(zip(MODULES, filters)):
            module = Inception(c_in, scaled_widths(base, count, divisor, floor))
            layers.append(module)
            c_in = module.out_channels
            outputs.append(c_in)
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.features = nn.Sequential(*layers)
        self.outputs: tuple[int, ...] = tuple(outputs)  # realised module outputs (rounding may move them)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the original's avg_pool(8) on an 8x8 map, same params
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(self.pre_layers(x))
        return self.linear(torch.flatten(self.pool(y), 1))


def build(filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1,
          floor: int = 1) -> nn.Module:
    return GoogLeNet(filters, num_classes, stem=scale_count(STEM, stem_width, floor=floor, divisor=divisor),
                     divisor=divisor, floor=floor)


FAMILY = register_family(
    Family(
        name="googlenet",
        base_filters=BASE,
        layer_names=NAMES,
        builder=build,
        unit="Inception module's output channels (inner widths scaled in proportion)",
        description="GoogLeNet (CIFAR): conv3x3 stem, 9 Inception modules, linear classifier",
    )
)
