"""Model families and their registry (SPEC section 3).

A family is one module that calls :func:`register_family` with its base template-layer counts
and a builder ``(filters, num_classes, stem_width, divisor, floor) -> nn.Module``. Adding a family means
adding one module and importing it at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch.nn as nn

from .. import validate
from ..errors import UsageError

__all__ = ["Family", "register_family", "get_family", "family_names", "MAX_FILTERS"]

# Far beyond any trainable CIFAR layer; a typo such as --width 1e9 fails here with one line
# instead of exhausting memory.
MAX_FILTERS = 65536
MAX_WIDTH = 1000.0  # width multipliers above this cannot be meant (VGG-19 at 1000 has 20e12 params)

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Family:
    """What the templates need to know about a CNN family.

    ``base_filters``: the per-template-layer counts ``f_1..f_D`` of the original model.
    ``layer_names``: one short label per template layer (for tables and plots).
    ``builder(filters, num_classes=10, stem_width=1.0, divisor=1, floor=1)``: a freshly initialised model.
    ``stem_width`` scales the layers that are not template layers (the stem) with the same
    rounding as the template layers (``templates.scale_count``).
    ``unit``: what one template layer is (a conv, a bottleneck block's planes, ...), for docs.
    """

    name: str
    base_filters: tuple[int, ...]
    layer_names: tuple[str, ...]
    builder: Builder
    unit: str
    description: str

    @property
    def depth(self) -> int:
        return len(self.base_filters)

    def build(
        self, filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1,
        floor: int = 1,
    ) -> nn.Module:
        filters = [int(f) for f in filters]
        if len(filters) != self.depth:
            raise UsageError(f"{self.name} has {self.depth} template layers, got {len(filters)} filter counts")
        if any(f < 1 for f in filters):
            raise UsageError(f"{self.name}: every filter count must be >= 1, got {filters}")
        if max(filters) > MAX_FILTERS:
            raise UsageError(f"{self.name}: a layer of {max(filters):,} filters is over the limit of "
                             f"{MAX_FILTERS:,}; use a smaller width or counts")
        if not (0 < stem_width <= MAX_WIDTH):
            raise UsageError(f"{self.name}: stem width {stem_width!r} is outside (0, {MAX_WIDTH:g}]")
        validate.integer(num_classes, "number of classes")
        return self.builder(filters, num_classes=num_classes, stem_width=stem_width, divisor=divisor, floor=floor)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise UsageError(f"model family {family.name!r} is already registered")
    if len(family.layer_names) != len(family.base_filters):
        raise UsageError(f"{family.name}: one layer name per template layer is required")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose from: {', '.join(_FAMILIES)}") from None


def family_names() -> list[str]:
    return list(_FAMILIES)


# Families register themselves on import; order here is the order users see.
from . import vgg, resnet, googlenet, mobilenet  # noqa: E402,F401
