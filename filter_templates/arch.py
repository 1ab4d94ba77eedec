"""An architecture record: everything needed to rebuild a templated model, as plain JSON.

Fit results, training configs, checkpoints and the results store all carry an :class:`Arch`, so a
model can always be rebuilt from its run directory without pickling modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch.nn as nn

from . import templates as T
from . import validate
from .errors import UsageError
from .models import MAX_WIDTH, get_family

__all__ = ["Arch", "make_arch"]


@dataclass(frozen=True)
class Arch:
    family: str
    template: str
    width: float
    classes: int
    filters: tuple[int, ...]
    divisor: int = 1
    floor: int = 1
    stem_width: float = field(default=-1.0)  # -1: same as width

    def __post_init__(self) -> None:
        if self.stem_width == -1.0:
            object.__setattr__(self, "stem_width", float(self.width))
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))

    def build(self) -> nn.Module:
        """A freshly initialised model (seed torch first for a repeatable init)."""
        return get_family(self.family).build(
            self.filters, num_classes=self.classes, stem_width=self.stem_width, divisor=self.divisor,
            floor=self.floor,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = list(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Arch":
        """Validate a config read from a file; any problem is a :class:`UsageError`."""
        if not isinstance(d, Mapping):
            raise UsageError("architecture config must be a JSON object")
        missing = [k for k in ("family", "template", "width", "classes", "filters") if k not in d]
        if missing:
            raise UsageError(f"architecture config lacks {', '.join(missing)}")
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise UsageError(f"architecture config has unknown keys: {', '.join(sorted(unknown))}")
        fam = get_family(str(d["family"]))
        filters = d["filters"]
        if not isinstance(filters, list) or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in filters):
            raise UsageError("architecture config 'filters' must be a list of positive integers")
        if len(filters) != fam.depth:
            raise UsageError(f"architecture config has {len(filters)} filter counts; {fam.name} has {fam.depth} template layers")
        width = validate.number(d["width"], "width")
        stem = validate.number(d.get("stem_width", width), "stem_width")
        return cls(
            family=fam.name,
            template=str(d["template"]),
            width=width,
            classes=validate.integer(d["classes"], "architecture config 'classes'"),
            filters=tuple(filters),
            divisor=validate.integer(d.get("divisor", 1), "architecture config 'divisor'"),
            floor=validate.integer(d.get("floor", 1), "architecture config 'floor'"),
            stem_width=stem,
        )


def make_arch(
    family: str,
    template: Union[str, Sequence[float], Callable[[list[int]], Sequence[float]]] = "base",
    width: float = 1.0,
    classes: int = 10,
    *,
    divisor: int = 1,
    floor: int = 1,
) -> Arch:
    """The model of ``family`` with ``template`` at width multiplier ``width``.

    Template layers get ``templates.distribute``; non-template layers (stems) are scaled by the
    same ``width`` with the same rounding inside the family's builder.
    """
    fam = get_family(family)
    if isinstance(width, (int, float)) and not isinstance(width, bool) and width > MAX_WIDTH:
        raise UsageError(f"width multiplier {width:g} is over the limit of {MAX_WIDTH:g}")
    name = T.template_label(template)
    filters = T.distribute(template, fam.base_filters, width, floor=floor, divisor=divisor)
    validate.integer(classes, "number of classes")
    return Arch(family=fam.name, template=name, width=float(width), classes=classes,
                filters=tuple(filters), divisor=divisor, floor=floor)
