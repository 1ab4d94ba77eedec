"""Filter distribution templates: pure arithmetic, no torch.

A template maps a model's base per-layer filter counts ``f_1..f_D`` to real-valued counts
``f'_1..f'_D`` that keep the total ``F`` (except ``base``/``reverse``, which keep it trivially).
Rounding is always the last step and lives in :func:`scale_counts`, so every template, built in
or user supplied, is scaled and rounded the same way.
"""

from __future__ import annotations

import importlib
import math
from fractions import Fraction
from typing import Callable, Sequence, Union

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.core.scaling import check_scaling, scale_count

__all__ = [
    "TemplateError",
    "TemplateFn",
    "base",
    "reverse",
    "uniform",
    "quadratic",
    "negative_quadratic",
    "register_template",
    "template_label",
    "unregister_template",
    "template_names",
    "get_template",
    "resolve_template",
    "real_counts",
    "scale_count",
    "scale_counts",
    "distribute",
]

TemplateFn = Callable[[Sequence[float]], Sequence[float]]


class TemplateError(UsageError, ValueError):
    """A template name, definition, or result that cannot be used; the message says why."""


# --------------------------------------------------------------------------------------------
# The five templates of the study
# --------------------------------------------------------------------------------------------


def _check_base(counts: Sequence[float]) -> list[float]:
    """Base counts are usually whole filter counts, but a template layer may stand for several
    convolutions (a GoogLeNet module's ``f_l`` is the mean of its six branch widths), so any
    positive finite number is a valid base count."""
    if len(counts) == 0:
        raise TemplateError("base filter counts are empty: a model needs at least one template layer")
    out = []
    for i, c in enumerate(counts, start=1):
        validate.number(c, f"base filter count of layer {i}", error=TemplateError)
        out.append(int(c) if c == int(c) else float(c))
    return out


def base(counts: Sequence[float]) -> list[float]:
    """The original distribution: the reference of every comparison."""
    return [float(c) for c in _check_base(counts)]


def reverse(counts: Sequence[float]) -> list[float]:
    """Paper name "Reverse-Base": the last layer's count goes first, ``f'_l = f_{D-l+1}``."""
    return [float(c) for c in reversed(_check_base(counts))]


def uniform(counts: Sequence[float]) -> list[float]:
    """Every layer gets the mean count ``F / D``."""
    f = _check_base(counts)
    return [sum(f) / len(f)] * len(f)


def _solve3(rows: list[list[Fraction]], rhs: list[Fraction]) -> tuple[Fraction, Fraction, Fraction]:
    """Exact Gaussian elimination for the 3x3 systems of the quadratic templates."""
    m = [row[:] + [r] for row, r in zip(rows, rhs)]
    for col in range(3):
        pivot = next((r for r in range(col, 3) if m[r][col] != 0), None)
        if pivot is None:
            raise TemplateError("the quadratic template's equations are singular for this model")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(3):
            if r != col and m[r][col] != 0:
                k = m[r][col] / m[col][col]
                m[r] = [x - k * y for x, y in zip(m[r], m[col])]
    a, b, c = (m[i][3] / m[i][i] for i in range(3))
    return a, b, c


def _sum_row(d: int) -> list[Fraction]:
    # sum_{l=1..D} (a l^2 + b l + c) = (D^3/3 + D^2/2 + D/6) a + (D^2/2 + D/2) b + D c
    D = Fraction(d)
    return [D**3 / 3 + D**2 / 2 + D / 6, D**2 / 2 + D / 2, D]


def _parabola(counts: Sequence[float], name: str) -> tuple[list[float], int]:
    f = _check_base(counts)
    if len(f) < 3:
        raise TemplateError(f"the {name} template needs at least 3 template layers, got {len(f)}")
    return f, len(f)


def quadratic(counts: Sequence[float]) -> list[float]:
    """Many filters at both ends, fewest (``f_min``) in the middle; the total ``F`` is kept.

    Solves ``f'(l) = a l^2 + b l + c`` from: the total is ``F``; ``f'(D/2) = f_min``; ``f'_1 = f'_D``.
    The source text prints the vertex equation's coefficient of ``a`` as ``D^2/2``; the value of
    the parabola at ``l = D/2`` has coefficient ``(D/2)^2 = D^2/4``, which is what we use (it
    reproduces the published VGG-19 counts 811 624 ... 64 64 ... 811).
    """
    f, d = _parabola(counts, "quadratic")
    D = Fraction(d)
    rows = [_sum_row(d), [(D / 2) ** 2, D / 2, Fraction(1)], [D**2 - 1, D - 1, Fraction(0)]]
    a, b, c = _solve3(rows, [Fraction(sum(f)), Fraction(min(f)), Fraction(0)])
    return [float(a * i * i + b * i + c) for i in range(1, d + 1)]


def negative_quadratic(counts: Sequence[float]) -> list[float]:
    """Fewest filters (``f_min``) at both ends, most in the middle; the total ``F`` is kept."""
    f, d = _parabola(counts, "negative-quadratic")
    D = Fraction(d)
    rows = [_sum_row(d), [Fraction(1), Fraction(1), Fraction(1)], [D**2, D, Fraction(1)]]
    a, b, c = _solve3(rows, [Fraction(sum(f)), Fraction(min(f)), Fraction(min(f))])
    return [float(a * i * i + b * i + c) for i in range(1, d + 1)]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Union[TemplateFn, tuple[float, ...]]] = {
    "base": base,
    "reverse": reverse,
    "uniform": uniform,
    "quadratic": quadratic,
    "negative-quadratic": negative_quadratic,
}
BUILTIN_TEMPLATES = tuple(_REGISTRY)


def register_template(name: str, template: Union[TemplateFn, Sequence[float]], *, overwrite: bool = False) -> None:
    """Make ``name`` usable wherever a template name is accepted (Python API and CLI).

    ``template`` is either a function ``base_counts -> counts`` or an explicit list of counts
    (which then only fits models with that many template layers). Results are validated when the
    template is applied, since only then is the model's depth known.
    """
    if not isinstance(name, str) or not name or "," in name or name != name.strip():
        raise TemplateError(f"invalid template name {name!r}: use a non-empty name without commas or spaces")
    if name in BUILTIN_TEMPLATES:
        raise TemplateError(f"template {name!r} is built in and cannot be replaced")
    if name in _REGISTRY and not overwrite:
        raise TemplateError(f"template {name!r} is already registered (pass overwrite=True to replace it)")
    if callable(template):
        _REGISTRY[name] = template
    else:
        _REGISTRY[name] = tuple(_validate(list(template), None, name))


def unregister_template(name: str) -> None:
    if name in BUILTIN_TEMPLATES:
        raise TemplateError(f"template {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def template_names() -> list[str]:
    """Built-in templates first, in the paper's order, then user-registered ones."""
    return list(_REGISTRY)


def get_template(name: str) -> Union[TemplateFn, tuple[float, ...]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TemplateError(
            f"unknown template {name!r}; choose from: {', '.join(_REGISTRY)} "
            "(or give explicit counts 'c1,c2,...' or a function 'module:function')"
        ) from None


def resolve_template(spec: str) -> Union[TemplateFn, tuple[float, ...]]:
    """Turn what a user typed into a template.

    Accepts a registered name, an explicit comma-separated list of counts (``64,128,256``), or a
    Python function path ``package.module:function`` that takes the base counts.
    """
    spec = spec.strip()
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if "," in spec or _is_number(spec):
        try:
            values = [float(x) for x in spec.split(",")]
        except ValueError:
            raise TemplateError(f"invalid explicit template {spec!r}: expected numbers separated by commas") from None
        return tuple(_validate(values, None, spec))
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise TemplateError(f"cannot load template function {spec!r}: {exc}") from None
        if not callable(fn):
            raise TemplateError(f"template {spec!r} is not callable")
        return fn
    return get_template(spec)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _validate(values: Sequence[float], depth: int | None, name: str, *, allow_nonpositive: bool = False) -> list[float]:
    if depth is not None and len(values) != depth:
        raise TemplateError(f"template {name!r} gives {len(values)} counts but the model has {depth} template layers")
    out = []
    for i, v in enumerate(values, start=1):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TemplateError(f"template {name!r} gives a non-numeric count {v!r} for layer {i}") from None
        if not math.isfinite(x):
            raise TemplateError(f"template {name!r} gives a non-finite count ({x}) for layer {i}")
        if x <= 0 and not allow_nonpositive:
            raise TemplateError(f"template {name!r} gives a non-positive count ({x:g}) for layer {i}")
        out.append(x)
    if not out:
        raise TemplateError(f"template {name!r} gives no counts")
    return out


def template_label(template: Union[str, TemplateFn, Sequence[float]]) -> str:
    """How records name a template: its name, ``module:function`` for an importable function (so
    ``--template`` can load it again), another function's ``__name__``, or explicit counts
    ``c1,c2,...``; anything else is a TemplateError."""
    if isinstance(template, str):
        return template
    if callable(template):
        module, qual = getattr(template, "__module__", None), getattr(template, "__qualname__", "")
        if module and module != "__main__" and qual and "<" not in qual:
            return f"{module}:{qual}"
        return getattr(template, "__name__", "custom")
    try:
        return ",".join(f"{float(x):g}" for x in template)
    except (TypeError, ValueError):
        raise TemplateError(
            f"a template is a name, a function base_counts -> counts or a list of counts; got {template!r}"
        ) from None


def real_counts(template: Union[str, TemplateFn, Sequence[float]], base_counts: Sequence[float]) -> list[float]:
    """Apply a template (name, function or explicit list) to base counts: real-valued, unrounded."""
    base_counts = _check_base(base_counts)
    name = template_label(template)
    t = resolve_template(template) if isinstance(template, str) else template
    if callable(t):
        try:
            values = list(t(list(base_counts)))
        except TemplateError:
            raise
        except Exception as exc:  # a user function failing is a bad template, not our crash
            raise TemplateError(f"template {name!r} failed: {type(exc).__name__}: {exc}") from None
    else:
        values = list(t)
    # The quadratic's true minimum sits half a layer past D/2 and can dip to zero or below for
    # extreme inputs (a tiny f_min beside a huge F); rounding clamps it to the floor, so only
    # user templates are held to "every count positive".
    return _validate(values, len(base_counts), name, allow_nonpositive=t is quadratic)


# --------------------------------------------------------------------------------------------
# Width multiplier and rounding
# --------------------------------------------------------------------------------------------


def _check_scaling(width: float, floor: int, divisor: int) -> None:
    check_scaling(width, floor, divisor, TemplateError)


def scale_counts(
    counts: Sequence[float], width: float = 1.0, *, floor: int = 1, divisor: int = 1, truncate: bool = False
) -> list[int]:
    """Round a whole distribution the same way as :func:`scale_count`."""
    _check_scaling(width, floor, divisor)
    return [scale_count(c, width, floor=floor, divisor=divisor, truncate=truncate) for c in counts]


def distribute(
    template: Union[str, TemplateFn, Sequence[float]],
    base_counts: Sequence[float],
    width: float = 1.0,
    *,
    floor: int = 1,
    divisor: int = 1,
    truncate: bool = False,
) -> list[int]:
    """The final integer counts ``f''_l`` of a template at a width: what a model is built from."""
    _check_scaling(width, floor, divisor)
    return scale_counts(real_counts(template, base_counts), width, floor=floor, divisor=divisor, truncate=truncate)
