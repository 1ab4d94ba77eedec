"""An architecture record: everything needed to rebuild a templated model, as plain JSON.

Fit results, training configs, checkpoints and the results store all carry an :class:`Arch`, so a
model can always be rebuilt from its run directory without pickling modules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch.nn as nn

from . import templates as T
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
    # A user's model (family "package.module:function"): the fingerprint of its discovered channel-group
    # plan and each template layer's modules, so a run refuses to rebuild from changed code.
    plan: str = ""
    layer_modules: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.stem_width == -1.0:
            object.__setattr__(self, "stem_width", float(self.width))
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        object.__setattr__(self, "layer_modules", tuple(tuple(str(m) for m in g) for g in self.layer_modules))

    def build(self) -> nn.Module:
        """A freshly initialised model (seed torch first for a repeatable init)."""
        return get_family(self.family).build(
            self.filters, num_classes=self.classes, stem_width=self.stem_width, divisor=self.divisor,
            floor=self.floor,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = list(self.filters)
        d["layer_modules"] = [list(g) for g in self.layer_modules]
        for k in ("plan", "layer_modules"):  # absent for built-in families: their records stay as they were
            if not d[k]:
                del d[k]
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
        width = _positive_float(d["width"], "width")
        stem = _positive_float(d.get("stem_width", width), "stem_width")
        plan = d.get("plan", "")
        if plan != getattr(fam, "fingerprint", ""):
            if not getattr(fam, "fingerprint", ""):
                raise UsageError(f"architecture config has a channel-group plan but {fam.name} is a built-in family")
            raise UsageError(f"model {fam.name} has changed since this record was written: its channel groups or "
                             f"layers differ (plan {plan or 'none'} recorded, {fam.fingerprint} now); use the code "
                             "it was made with, or start a new run")
        layer_modules = d.get("layer_modules", [])
        if not isinstance(layer_modules, list) or not all(
                isinstance(g, list) and all(isinstance(m, str) for m in g) for g in layer_modules):
            raise UsageError("architecture config 'layer_modules' must be a list of lists of module names")
        classes = d["classes"]
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise UsageError(f"architecture config 'classes' must be a positive integer, got {classes!r}")
        return cls(
            family=fam.name,
            template=str(d["template"]),
            width=width,
            classes=classes,
            filters=tuple(filters),
            divisor=int(d.get("divisor", 1)),
            floor=int(d.get("floor", 1)),
            stem_width=stem,
            plan=plan,
            layer_modules=tuple(tuple(g) for g in layer_modules),
        )


def _positive_float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UsageError(f"{what} must be a positive finite number, got {v!r}")
    return float(v)


def make_arch(
    family: Union[str, nn.Module, Callable[..., nn.Module]],
    template: Union[str, Sequence[float]] = "base",
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
    if not isinstance(family, str):  # the Python API takes a module or a callable too
        from .models import resolve_model

        family = resolve_model(family)
    fam = get_family(family)
    if isinstance(width, (int, float)) and not isinstance(width, bool) and width > MAX_WIDTH:
        raise UsageError(f"width multiplier {width:g} is over the limit of {MAX_WIDTH:g}")
    name = template if isinstance(template, str) else ",".join(f"{x:g}" for x in template)
    filters = T.distribute(template, fam.base_filters, width, floor=floor, divisor=divisor)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise UsageError(f"number of classes must be a positive integer, got {classes!r}")
    return Arch(family=fam.name, template=name, width=float(width), classes=classes,
                filters=tuple(filters), divisor=divisor, floor=floor, plan=getattr(fam, "fingerprint", ""),
                layer_modules=getattr(fam, "layer_modules", ()))
