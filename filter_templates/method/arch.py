"""An architecture record: everything needed to rebuild a templated model, as plain JSON.

Fit results, training configs, checkpoints and the results store all carry an :class:`Arch`, so a
model can always be rebuilt from its run directory without pickling modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch.nn as nn

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE, MIN_IMAGE_SIZE
from filter_templates.core.scaling import scale_count
from filter_templates.method import published, templates
from filter_templates.models import MAX_WIDTH, get_family, resolve_model
from filter_templates.models.readings import DEFAULT_READING, check_reading
from filter_templates.models.registry import registered

__all__ = ["Arch", "ArchOptions", "ModelLike", "make_arch", "STUDY_MIN_IMAGE_SIZE", "floored_layers", "floor_warning"]

#: What names a model in Python: a family name, ``package.module:function``, an ``nn.Module`` or a
#: callable returning one.
ModelLike = Union[str, nn.Module, Callable[..., nn.Module]]

STUDY_MIN_IMAGE_SIZE = 32  # VGG-19 pools five times: the built-in families need at least 32 px


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
    # The study's literal configuration and rounding instead of the equations.
    as_published: bool = False
    # Every width the builder takes, for families whose template-layer counts do not fix them all
    # (Family.expand); empty for the others.
    widths: tuple[int, ...] = ()
    # A user's model (family "package.module:function"): the fingerprint of its discovered channel-group
    # plan and each template layer's modules, so a run refuses to rebuild from changed code.
    plan: str = ""
    layer_modules: tuple[tuple[str, ...], ...] = ()
    # The side of the square images the model takes: parameters can be the same at every size, but
    # FLOPs, memory and latency are counted at this one, and a user's model is discovered on it.
    image_size: int = IMAGE_SIZE

    def __post_init__(self) -> None:
        if self.stem_width == -1.0:
            object.__setattr__(self, "stem_width", float(self.width))
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "layer_modules", tuple(tuple(str(m) for m in g) for g in self.layer_modules))

    def build(self) -> nn.Module:
        """A freshly initialised model (seed torch first for a repeatable init)."""
        return get_family(self.family, self.image_size).build(
            self.filters,
            num_classes=self.classes,
            stem_width=self.stem_width,
            divisor=self.divisor,
            floor=self.floor,
            widths=self.widths,
        )

    @property
    def reading(self) -> str:
        """Which reading built the counts: the templates' equations or the study's published lists."""
        return "as published" if self.as_published else "equations"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = list(self.filters)
        # Left out at their defaults, so the records (and the results store's keys) of models that
        # have no separate widths and follow the equations read as they did before these fields.
        if self.widths:
            d["widths"] = list(self.widths)
        else:
            del d["widths"]
        if not self.as_published:
            del d["as_published"]
        d["layer_modules"] = [list(g) for g in self.layer_modules]
        for k in ("plan", "layer_modules"):  # absent for built-in families: their records stay as they were
            if not d[k]:
                del d[k]
        if self.image_size == IMAGE_SIZE:  # absent at 32 px: records of 32 px models read as before
            del d["image_size"]
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
        size = validate.integer(d.get("image_size", IMAGE_SIZE), "architecture config 'image_size'", MIN_IMAGE_SIZE)
        fam = get_family(str(d["family"]), size)
        _check_size(fam.name, size)
        filters = validate.positive_integers(d["filters"], "architecture config 'filters'")
        if len(filters) != fam.depth:
            raise UsageError(
                f"architecture config has {len(filters)} filter counts; {fam.name} has {fam.depth} template layers"
            )
        width = validate.number(d["width"], "width")
        stem = validate.number(d.get("stem_width", width), "stem_width")
        plan = d.get("plan", "")
        fingerprint = getattr(fam, "fingerprint", "")  # only a discovered family (models.generic) has one
        if plan != fingerprint:
            if not fingerprint:
                raise UsageError(f"architecture config has a channel-group plan but {fam.name} is a built-in family")
            raise UsageError(
                f"model {fam.name} has changed since this record was written: its channel groups or "
                f"layers differ (plan {plan or 'none'} recorded, {fingerprint} now); use the code "
                "it was made with, or start a new run"
            )
        layer_modules = d.get("layer_modules", [])
        if not isinstance(layer_modules, list) or not all(
            isinstance(g, list) and all(isinstance(m, str) for m in g) for g in layer_modules
        ):
            raise UsageError("architecture config 'layer_modules' must be a list of lists of module names")
        as_published = d.get("as_published", False)
        if not isinstance(as_published, bool):
            raise UsageError(f"architecture config 'as_published' must be true or false, got {as_published!r}")
        widths = validate.positive_integers(d.get("widths", []), "architecture config 'widths'")
        if widths and fam.expand is None:
            raise UsageError(f"architecture config has 'widths' but {fam.name} takes none")
        return cls(
            family=fam.name,
            template=str(d["template"]),
            width=width,
            classes=validate.integer(d["classes"], "architecture config 'classes'"),
            filters=tuple(filters),
            divisor=validate.integer(d.get("divisor", 1), "architecture config 'divisor'"),
            floor=validate.integer(d.get("floor", 1), "architecture config 'floor'"),
            stem_width=stem,
            as_published=as_published,
            widths=tuple(widths),
            plan=plan,
            layer_modules=tuple(tuple(g) for g in layer_modules),
            image_size=size,
        )


def _check_size(family: str, image_size: int) -> None:
    """The built-in families need at least ``STUDY_MIN_IMAGE_SIZE`` px (a smaller map pools to nothing)."""
    if ":" not in family and image_size < STUDY_MIN_IMAGE_SIZE:
        raise UsageError(
            f"{family} takes images of at least {STUDY_MIN_IMAGE_SIZE}x{STUDY_MIN_IMAGE_SIZE} px, "
            f"not {image_size}x{image_size}; use a larger --image-size"
        )


def make_arch(
    family: Union[str, nn.Module, Callable[..., nn.Module]],
    template: Union[str, Sequence[float], templates.TemplateFn] = "base",
    width: float = 1.0,
    classes: int = 10,
    *,
    divisor: int = 1,
    floor: int = 1,
    as_published: bool = False,
    image_size: int = IMAGE_SIZE,
) -> Arch:
    """The model of ``family`` with ``template`` at width multiplier ``width``.

    Template layers get the template's real counts, scaled and rounded (``core.scaling.scale_count``);
    non-template layers (stems, MobileNet's last block) are scaled by the same ``width`` with the
    same rounding. ``as_published=True`` builds the study's own configuration where it has one
    (``published.STUDY``) and uses its rounding ``max(1, int(w * f))`` everywhere. ``image_size``:
    the side of the square images the model takes (its dataset's).
    """
    validate.integer(image_size, "image size", MIN_IMAGE_SIZE)
    if not isinstance(family, str):  # the Python API takes a module or a callable too
        family = resolve_model(family, image_size=image_size)
    fam = get_family(family, image_size)
    _check_size(fam.name, image_size)
    validate.up_to(width, "width multiplier", MAX_WIDTH)
    validate.integer(classes, "number of classes")
    if not isinstance(as_published, bool):
        raise UsageError(f"as_published must be True or False, got {as_published!r}")
    if as_published and fam.name not in published.study_families():
        raise UsageError(
            f"--as-published applies to the study's families ({', '.join(published.study_families())}), not {fam.name}"
        )
    name = templates.template_label(template)
    scale_count(1, width, floor=floor, divisor=divisor)  # one check of width, floor and divisor

    def scale(count: float) -> int:
        return scale_count(count, width, floor=floor, divisor=divisor, truncate=as_published)

    study = published.study_config(fam.name, name) if as_published else None
    if study is not None:
        real = fam.layers_of(study) if fam.layers_of else list(study)
        widths = tuple(scale(w) for w in study) if fam.expand else ()
    else:
        real = templates.real_counts(template, fam.base_filters)
        builtin = name if name in templates.BUILTIN_TEMPLATES else None
        widths = fam.expand(builtin, real, scale) if fam.expand else ()
    filters = [scale(f) for f in real]
    return Arch(
        family=fam.name,
        template=name,
        width=float(width),
        classes=classes,
        filters=tuple(filters),
        divisor=divisor,
        floor=floor,
        as_published=as_published,
        widths=widths,
        plan=getattr(fam, "fingerprint", ""),
        layer_modules=getattr(fam, "layer_modules", ()),
        image_size=image_size,
    )


def floored_layers(arch: Arch) -> int:
    """How many template layers of ``arch`` the floor holds up: their count at width 1 times the
    width is below the floor (lifted to the divisor), so the floor, not the template, sets them."""
    if arch.width >= 1.0:
        return 0
    try:  # the same template and reading at width 1, no floor: each layer's unrounded count
        one = make_arch(
            arch.family, arch.template, 1.0, arch.classes, as_published=arch.as_published, image_size=arch.image_size
        )
    except UsageError:  # a custom template this process cannot load: nothing to say
        return 0
    lowest = -(-arch.floor // arch.divisor) * arch.divisor
    return sum(1 for f in one.filters if f * arch.width < lowest)


def floor_warning(arch: Arch) -> str | None:
    """A line for the user when the floor holds more than half of the template layers: the model is
    the floor's shape, not the template's, and at a floor of one or two filters it may not learn."""
    n = floored_layers(arch)
    if 2 * n <= len(arch.filters):
        return None
    return (
        f"{arch.family} {arch.template} at width {arch.width:g}: {n} of {len(arch.filters)} template layers "
        f"are held at the floor of {arch.floor} filter{'s' * (arch.floor != 1)} (width x count is below it), so "
        "the floor, not the template, shapes the model and it may train to chance; use a larger width "
        "(or --floor)"
    )


@dataclass(frozen=True)
class ArchOptions:
    """How every model of a command, fit, sweep or reduce is built besides its family, template and
    width: ``divisor`` and ``floor`` (every count a multiple of the one, at least the other),
    ``as_published`` (the study's configurations and rounding), ``image_size`` (the side of the
    square images the models take) and ``reading`` (which channel groups of a user's network share
    one template layer: ``modules`` or ``groups``). One object, so that a new option is added once."""

    divisor: int = 1
    floor: int = 1
    as_published: bool = False
    image_size: int = IMAGE_SIZE
    reading: str = DEFAULT_READING

    def __post_init__(self) -> None:
        validate.integer(self.divisor, "divisor")
        validate.integer(self.floor, "floor")
        validate.integer(self.image_size, "image size", MIN_IMAGE_SIZE)
        if not isinstance(self.as_published, bool):
            raise UsageError(f"as_published must be true or false, got {self.as_published!r}")
        check_reading(self.reading)

    def family(self, model: ModelLike, fixed: Sequence[str] = ()) -> str:
        """The family name ``model`` goes by: a built-in family's own, or a user network's, loaded
        in this process and discovered on ``image_size`` px inputs with this reading."""
        if isinstance(model, str) and registered(model) is not None:
            if self.reading != DEFAULT_READING:
                raise UsageError(
                    f"reading {self.reading!r} applies to your own networks, not to the built-in family "
                    f"{model!r} (it has its study's template layers)"
                )
            return model
        return resolve_model(model, fixed=fixed, image_size=self.image_size, reading=self.reading)

    def arch(
        self,
        family: ModelLike,
        template: Union[str, Sequence[float], templates.TemplateFn],
        width: float,
        classes: int,
    ) -> Arch:
        """:func:`make_arch` with these options (a model object is named by :meth:`family` first)."""
        return make_arch(
            family if isinstance(family, str) else self.family(family),
            template,
            width,
            classes,
            divisor=self.divisor,
            floor=self.floor,
            as_published=self.as_published,
            image_size=self.image_size,
        )

    def replace(self, **changes: Optional[Any]) -> "ArchOptions":
        """These options with the given ones that are not None (flags a user left out are None)."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = set(given) - set(self.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown architecture options: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **given)
