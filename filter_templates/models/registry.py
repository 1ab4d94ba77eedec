"""The registry of model families, apart from the families themselves (as timm keeps its registry
apart from its models): a family module decorates its builder with :func:`family` and imports only
this module, so no family imports the package that imports it.

Torch-free: a family's builder returns an ``nn.Module``, but registering and looking one up needs
no tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from filter_templates.core import validate
from filter_templates.core.errors import UsageError

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["Family", "family", "register_family", "registered", "family_names", "MAX_FILTERS", "MAX_WIDTH"]

# Far beyond any trainable CIFAR layer; a typo such as --width 1e9 fails here with one line
# instead of exhausting memory.
MAX_FILTERS = 65536
MAX_WIDTH = 1000.0  # width multipliers above this cannot be meant (VGG-19 at 1000 has 20e12 params)

Builder = Callable[..., "nn.Module"]
# (template name or None for a custom one, real template counts, rounding of one count) -> the builder's widths
Expand = Callable[[Optional[str], Sequence[float], Callable[[float], int]], tuple[int, ...]]


@dataclass(frozen=True)
class Family:
    """What the templates need to know about a CNN family.

    ``base_filters``: the per-template-layer counts ``f_1..f_D`` of the original model.
    ``layer_names``: one short label per template layer (for tables and plots).
    ``builder(filters, num_classes=10, stem_width=1.0, divisor=1, floor=1)``: a freshly initialised model.
    ``stem_width`` scales the layers that are not template layers (the stem) with the same
    rounding as the template layers (``core.scaling.scale_count``).
    ``unit``: what one template layer is (a conv, a bottleneck block's planes, ...), for docs.
    ``expand``: for families whose template-layer counts do not fix every width (a GoogLeNet module's
    six branch convolutions, MobileNet's fixed last block), the full width list the builder takes as
    ``widths=``, in the study's cfg order; ``layers_of`` maps such a list back to one value per
    template layer (for the study's literal configurations). ``fixed_layers``: the names of the
    layers ``expand`` appends after the template layers' widths, which no template sets (MobileNet's
    last block), so a figure of the layers can draw them too.
    """

    name: str
    base_filters: tuple[float, ...]
    layer_names: tuple[str, ...]
    builder: Builder
    unit: str
    description: str
    expand: Optional[Expand] = None
    layers_of: Optional[Callable[[Sequence[int]], list[float]]] = None
    fixed_layers: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.base_filters)

    def build(
        self,
        filters: Sequence[int],
        num_classes: int = 10,
        stem_width: float = 1.0,
        divisor: int = 1,
        floor: int = 1,
        widths: Sequence[int] = (),
    ) -> "nn.Module":
        """The one way a model is built (every caller, ``Arch.build`` included, comes here): the
        counts are checked once, then the family's builder runs."""
        if len(filters) != self.depth:
            raise UsageError(f"{self.name} has {self.depth} template layers, got {len(filters)} filter counts")
        if widths and self.expand is None:
            raise UsageError(f"{self.name} takes no separate width list")
        filters = validate.layer_counts(filters, "filter count", MAX_FILTERS, owner=self.name)
        widths = validate.layer_counts(widths, "width", MAX_FILTERS, owner=self.name)
        validate.up_to(stem_width, f"{self.name}: stem width", MAX_WIDTH)
        validate.integer(num_classes, "number of classes")
        extra: dict[str, Any] = {"widths": tuple(widths)} if self.expand is not None else {}
        return self.builder(
            filters, num_classes=num_classes, stem_width=stem_width, divisor=divisor, floor=floor, **extra
        )


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise UsageError(f"model family {family.name!r} is already registered")
    if len(family.layer_names) != len(family.base_filters):
        raise UsageError(f"{family.name}: one layer name per template layer is required")
    _FAMILIES[family.name] = family
    return family


def family(
    name: str,
    base_filters: Sequence[float],
    layer_names: Sequence[str],
    unit: str,
    description: str,
    expand: Optional[Expand] = None,
    layers_of: Optional[Callable[[Sequence[int]], list[float]]] = None,
    fixed_layers: Sequence[str] = (),
) -> Callable[[Builder], Builder]:
    """Register the decorated builder as the family ``name`` (where it is defined, as timm does)."""

    def wrap(builder: Builder) -> Builder:
        register_family(
            Family(
                name,
                tuple(base_filters),
                tuple(layer_names),
                builder,
                unit,
                description,
                expand,
                layers_of,
                tuple(fixed_layers),
            )
        )
        return builder

    return wrap


def registered(name: str) -> Optional[Family]:
    """The family registered as ``name``, or None."""
    return _FAMILIES.get(name)


def family_names() -> list[str]:
    """Registered families in registration order (the order users see)."""
    return list(_FAMILIES)
