"""GoogLeNet, CIFAR form: conv3x3(192)+BN+ReLU stem, Inception modules a3 b3 (max-pool) a4 b4 c4
d4 e4 (max-pool) a5 b5, global average pool, one linear classifier; the 5x5 branch is two 3x3
convs and every conv has a bias, BN and ReLU. 6,166,250 parameters (10 classes).

One template layer is one Inception module, in two readings:

- ``googlenet`` (the study's): a module's ``f_l`` is the MEAN width of its six branch
  convolutions (1x1; 3x3-reduce; 3x3; 5x5-reduce; the 5x5 branch's 3x3 convs; pool projection), e.g.
  a3 = (64+96+128+16+32+32)/6. ``base`` keeps every module's own six widths (times ``w``);
  ``reverse`` swaps whole modules (module ``l`` takes the six widths of module ``D-l+1``); any other
  template sets all six to the module's new value. The stem is the first module's input width as the
  study builds it: 192 for base, 832 for reverse (the input of the module it takes), the first
  module's value otherwise. Its widths list is the study's cfg: stem + 9 x 6 branch widths.
- ``googlenet-proportional``: a module's ``f_l`` is its output channels (the sum of its four branch
  outputs: 256 480 512 512 512 528 832 832 1024). A module given ``f'_l`` scales EVERY inner width by
  ``f'_l / f_l`` with the templates' rounding (``scale_count``); the module's realised output (the
  sum of its four rounded branches) feeds the next module (``GoogLeNet.outputs`` lists them). The
  stem (192) is scaled by ``stem_width``.

At base counts both readings build exactly the original.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from filter_templates.core.errors import UsageError
from filter_templates.core.scaling import scale_count
from filter_templates.models.registry import family


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
MEANS = tuple(sum(m) / 6 for m in MODULES)  # the study's f_l: a module's mean branch width
STEM = 192
INPUTS = (STEM, *BASE[:-1])  # each module's input width in the original
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
    """``modules``: the nine modules' inner widths; the next module takes a module's realised output."""

    def __init__(self, modules: Sequence[Widths], num_classes: int = 10, stem: int = STEM) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*_cbr(3, stem, 3))
        layers: list[nn.Module] = []
        outputs = []
        c_in = stem
        for i, widths in enumerate(modules):
            module = Inception(c_in, widths)
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


def expand(template: Optional[str], real: Sequence[float], scale: Callable[[float], int]) -> tuple[int, ...]:
    """The study's cfg (stem + 9 x 6 branch widths) of a template's module values."""
    if template == "base":
        return (scale(STEM), *(scale(w) for m in MODULES for w in m))
    if template == "reverse":
        return (scale(INPUTS[-1]), *(scale(w) for m in reversed(MODULES) for w in m))
    values = [scale(f) for f in real]
    return (values[0], *(v for v in values for _ in range(6)))


def layers_of(widths: Sequence[int]) -> list[float]:
    """One value per module: the mean of its six branch widths."""
    return [sum(widths[1 + 6 * i : 7 + 6 * i]) / 6 for i in range(len(MODULES))]


@family(
    "googlenet",
    base_filters=MEANS,
    layer_names=NAMES,
    unit="Inception module's mean branch width (a template sets all six branch convs to it)",
    description="GoogLeNet (CIFAR): conv3x3 stem, 9 Inception modules, linear classifier; one template "
    "layer per module, its mean branch width (the study's reading)",
    expand=expand,
    layers_of=layers_of,
)
def build_study(
    filters: Sequence[int],
    num_classes: int = 10,
    stem_width: float = 1.0,
    divisor: int = 1,
    floor: int = 1,
    widths: Sequence[int] = (),
) -> nn.Module:
    widths = tuple(widths) or expand(None, filters, int)
    if len(widths) != 1 + 6 * len(MODULES):
        raise UsageError(f"googlenet takes {1 + 6 * len(MODULES)} widths (stem + 9 x 6), got {len(widths)}")
    modules = [Widths(*widths[1 + 6 * i : 7 + 6 * i]) for i in range(len(MODULES))]
    return GoogLeNet(modules, num_classes, stem=widths[0])


@family(
    "googlenet-proportional",
    base_filters=BASE,
    layer_names=NAMES,
    unit="Inception module's output channels (inner widths scaled in proportion)",
    description="GoogLeNet (CIFAR): conv3x3 stem, 9 Inception modules, linear classifier; one template "
    "layer per module, its output channels",
)
def build(
    filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1, floor: int = 1
) -> nn.Module:
    modules = [scaled_widths(base, count, divisor, floor) for base, count in zip(MODULES, filters)]
    return GoogLeNet(modules, num_classes, stem=scale_count(STEM, stem_width, floor=floor, divisor=divisor))
