"""Model families and their registry (SPEC section 3).

A family is one module whose builder ``(filters, num_classes, stem_width, divisor, floor) -> nn.Module``
is decorated with :func:`family` (name, base template-layer counts, layer names), as timm registers its
models. Adding a family means adding one module and importing it at the bottom of this file.

The four study families follow the study's own template layers (SPEC 2.8); the finer readings this
project used first stay available as ``resnet50-blocks``, ``mobilenet-blocks`` and
``googlenet-proportional``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch.nn as nn

from .. import validate
from ..errors import UsageError

__all__ = ["Family", "family", "register_family", "get_family", "family_names", "resolve_model", "MAX_FILTERS"]

# Far beyond any trainable CIFAR layer; a typo such as --width 1e9 fails here with one line
# instead of exhausting memory.
MAX_FILTERS = 65536
MAX_WIDTH = 1000.0  # width multipliers above this cannot be meant (VGG-19 at 1000 has 20e12 params)

Builder = Callable[..., nn.Module]
# (template name or None for a custom one, real template counts, rounding of one count) -> the builder's widths
Expand = Callable[[Optional[str], Sequence[float], Callable[[float], int]], tuple[int, ...]]


@dataclass(frozen=True)
class Family:
    """What the templates need to know about a CNN family.

    ``base_filters``: the per-template-layer counts ``f_1..f_D`` of the original model.
    ``layer_names``: one short label per template layer (for tables and plots).
    ``builder(filters, num_classes=10, stem_width=1.0, divisor=1, floor=1)``: a freshly initialised model.
    ``stem_width`` scales the layers that are not template layers (the stem) with the same
    rounding as the template layers (``templates.scale_count``).
    ``unit``: what one template layer is (a conv, a bottleneck block's planes, ...), for docs.
    ``expand``: for families whose template-layer counts do not fix every width (a GoogLeNet module's
    six branch convolutions, MobileNet's fixed last block), the full width list the builder takes as
    ``widths=``, in the study's cfg order; ``layers_of`` maps such a list back to one value per
    template layer (for the study's literal configurations, SPEC 2.9).
    """

    name: str
    base_filters: tuple[float, ...]
    layer_names: tuple[str, ...]
    builder: Builder
    unit: str
    description: str
    expand: Optional[Expand] = None
    layers_of: Optional[Callable[[Sequence[int]], list[float]]] = None

    @property
    def depth(self) -> int:
        return len(self.base_filters)

    def build(
        self, filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1,
        floor: int = 1, widths: Sequence[int] = (),
    ) -> nn.Module:
        filters = [int(f) for f in filters]
        if len(filters) != self.depth:
            raise UsageError(f"{self.name} has {self.depth} template layers, got {len(filters)} filter counts")
        if any(f < 1 for f in filters):
            raise UsageError(f"{self.name}: every filter count must be >= 1, got {filters}")
        widths = [int(w) for w in widths]
        if widths and self.expand is None:
            raise UsageError(f"{self.name} takes no separate width list")
        if any(w < 1 for w in widths):
            raise UsageError(f"{self.name}: every width must be >= 1, got {widths}")
        if max(filters + widths) > MAX_FILTERS:
            raise UsageError(f"{self.name}: a layer of {max(filters + widths):,} filters is over the limit of "
                             f"{MAX_FILTERS:,}; use a smaller width or counts")
        if not (0 < stem_width <= MAX_WIDTH):
            raise UsageError(f"{self.name}: stem width {stem_width!r} is outside (0, {MAX_WIDTH:g}]")
        validate.integer(num_classes, "number of classes")
        extra = {"widths": tuple(widths)} if self.expand is not None else {}
        return self.builder(filters, num_classes=num_classes, stem_width=stem_width, divisor=divisor, floor=floor,
                            **extra)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise UsageError(f"model family {family.name!r} is already registered")
    if len(family.layer_names) != len(family.base_filters):
        raise UsageError(f"{family.name}: one layer name per template layer is required")
    _FAMILIES[family.name] = family
    return family


def family(name: str, base_filters: Sequence[float], layer_names: Sequence[str], unit: str, description: str,
           expand: Optional[Expand] = None,
           layers_of: Optional[Callable[[Sequence[int]], list[float]]] = None) -> Callable[[Builder], Builder]:
    """Register the decorated builder as the family ``name`` (where it is defined, as timm does)."""

    def wrap(builder: Builder) -> Builder:
        register_family(Family(name, tuple(base_filters), tuple(layer_names), builder, unit, description, expand,
                               layers_of))
        return builder

    return wrap


def get_family(name: str) -> Family:
    """A built-in family, or a user's model loaded by :func:`resolve_model` in this process."""
    try:
        return _FAMILIES[name]
    except KeyError:
        pass
    if isinstance(name, str) and ":" in name:
        from .generic import generic_family

        return generic_family(name)
    raise UsageError(f"unknown model {name!r}; choose from: {', '.join(_FAMILIES)} "
                     "(or a function 'package.module:function' returning an nn.Module)") from None


def resolve_model(model: "str | nn.Module | Callable[..., nn.Module]", *, fixed: Sequence[str] = (), name: str | None = None) -> str:
    """What ``--model`` (or the Python API) names, as a family name: the one place a model's code is
    imported. ``model``: a family name, ``package.module:function``, or in Python a callable
    returning an ``nn.Module`` or a module. ``fixed``: module names whose channel groups keep their
    width times the multiplier instead of being template layers (user models only). ``name``: the
    family name of a callable or module (default: its ``module:qualname``)."""
    if isinstance(model, str) and model in _FAMILIES:
        if fixed:
            raise UsageError(f"--fix applies to models given as package.module:function, not to {model!r}")
        return model
    if isinstance(model, str) and ":" not in model:
        get_family(model)  # the unknown-model error
    from .generic import load_model

    return load_model(model, fixed=fixed, name=name)


def family_names() -> list[str]:
    return list(_FAMILIES)


# Families register themselves on import; order here is the order users see.
from . import vgg, resnet, googlenet, mobilenet  # noqa: E402,F401  (each registers a study family, then its variant)
