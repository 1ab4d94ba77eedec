"""MobileNet v1, CIFAR form: conv3x3(32)+BN+ReLU stem, 13 depthwise-separable blocks (depthwise
3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU, all bias-free), stride 2 at the 2nd, 4th, 6th and
12th block, global average pool, one linear classifier. 3,217,226 parameters (10 classes).

Two readings of "template layer" (the depthwise conv always keeps its input's width, groups = channels):

- ``mobilenet`` (the study's): 13 template layers, the stem (32) and the pointwise outputs
  of the first 12 blocks (64 128 128 256 256 512x6 1024). The last block (1024, feeding the
  classifier) is not a template layer: it keeps ``1024 * w``. Its widths list is the study's cfg:
  stem + 13 blocks, so ``--as-published`` can build the study's configurations that also change the
  last block.
- ``mobilenet-blocks``: 13 template layers, one per block's pointwise output (64 ... 1024 1024); the
  stem (32) is scaled by ``stem_width``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from filter_templates.core.errors import UsageError
from filter_templates.core.scaling import scale_count
from filter_templates.models.registry import family
from filter_templates.models.skeleton import StemNet

BASE = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
STEM = 32
STRIDE2 = frozenset({1, 3, 5, 11})  # 0-based: the 2nd, 4th, 6th and 12th block


class Block(nn.Module):
    """Depthwise conv3x3 then pointwise conv1x1, each with BN and ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride=stride, padding=1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MobileNet(StemNet):
    def __init__(self, filters: Sequence[int], num_classes: int = 10, stem: int = STEM) -> None:
        def blocks(c_in: int) -> tuple[list[nn.Module], int]:
            out: list[nn.Module] = []
            for i, c in enumerate(filters):
                out.append(Block(c_in, c, 2 if i in STRIDE2 else 1))
                c_in = c
            return out, c_in

        super().__init__(stem, blocks, num_classes)


LAST = BASE[-1]  # the study keeps the last block out of the templates


def expand(template: Optional[str], real: Sequence[float], scale: Callable[[float], int]) -> tuple[int, ...]:
    """The study's cfg: stem and 12 blocks from the template, the last block its base width scaled."""
    return (*(scale(f) for f in real), scale(LAST))


@family(
    "mobilenet",
    base_filters=(STEM, *BASE[:-1]),
    layer_names=("stem", *(f"block{i}" for i in range(1, 13))),
    unit="stem's or depthwise-separable block's pointwise output channels; block 13 stays 1024 x w",
    description="MobileNet v1 (CIFAR): conv3x3 stem, 13 depthwise-separable blocks, linear classifier; "
    "template layers: the stem and the first 12 blocks (the study's reading)",
    expand=expand,
    layers_of=lambda widths: [float(w) for w in widths[:-1]],
    fixed_layers=("block13",),
)
def build_study(
    filters: Sequence[int],
    num_classes: int = 10,
    stem_width: float = 1.0,
    divisor: int = 1,
    floor: int = 1,
    widths: Sequence[int] = (),
) -> nn.Module:
    widths = tuple(widths) or (*filters, scale_count(LAST, stem_width, floor=floor, divisor=divisor))
    if len(widths) != len(BASE) + 1:
        raise UsageError(f"mobilenet takes {len(BASE) + 1} widths (stem + 13 blocks), got {len(widths)}")
    return MobileNet(widths[1:], num_classes, stem=widths[0])


@family(
    "mobilenet-blocks",
    base_filters=BASE,
    layer_names=tuple(f"block{i}" for i in range(1, 14)),
    unit="depthwise-separable block's pointwise output channels",
    description="MobileNet v1 (CIFAR): conv3x3 stem, 13 depthwise-separable blocks, linear classifier; "
    "one template layer per block",
)
def build(
    filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1, floor: int = 1
) -> nn.Module:
    return MobileNet(filters, num_classes, stem=scale_count(STEM, stem_width, floor=floor, divisor=divisor))
