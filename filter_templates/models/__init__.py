"""Model families: the built-in ones and the user's own networks, looked up by name.

A family is one module whose builder ``(filters, num_classes, stem_width, divisor, floor) -> nn.Module``
is decorated with :func:`registry.family` (name, base template-layer counts, layer names), as timm
registers its models. Adding a family means adding one module and importing it below; the registry
itself lives in ``registry.py``, which no family needs this package for.

The four study families follow the study's own template layers; the finer readings stay
available as ``resnet50-blocks``, ``mobilenet-blocks`` and ``googlenet-proportional``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn

from filter_templates.core.errors import UsageError

# Families register themselves on import; the order here is the order users see.
# isort: off
from filter_templates.models import vgg, resnet, googlenet, mobilenet  # noqa: F401  (they register on import)

# isort: on
from filter_templates.models.generic import DISCOVERY_SIZE, generic_family, load_model
from filter_templates.models.registry import (
    MAX_FILTERS,
    MAX_WIDTH,
    Family,
    family,
    family_names,
    register_family,
    registered,
)

__all__ = [
    "Family",
    "family",
    "register_family",
    "get_family",
    "family_names",
    "resolve_model",
    "MAX_FILTERS",
    "MAX_WIDTH",
]


def get_family(name: str, image_size: int = DISCOVERY_SIZE) -> Family:
    """A built-in family, or a user's model loaded by :func:`resolve_model` in this process (as
    discovered on ``image_size`` px inputs; the built-in families take any size of at least 32)."""
    found = registered(name) if isinstance(name, str) else None
    if found is not None:
        return found
    if isinstance(name, str) and ":" in name:
        return generic_family(name, image_size)
    raise UsageError(
        f"unknown model {name!r}; choose from: {', '.join(family_names())} "
        "(or a function 'package.module:function' returning an nn.Module)"
    ) from None


def resolve_model(
    model: "str | nn.Module | Callable[..., nn.Module]",
    *,
    fixed: Sequence[str] = (),
    name: str | None = None,
    image_size: int = DISCOVERY_SIZE,
    reading: str | None = None,
) -> str:
    """What ``--model`` (or the Python API) names, as a family name: the one place a model's code is
    imported. ``model``: a family name, ``package.module:function``, or in Python a callable
    returning an ``nn.Module`` or a module. ``fixed``: module names whose channel groups keep their
    width times the multiplier instead of being template layers (user models only). ``name``: the
    family name of a callable or module (default: its ``module:qualname``). ``image_size``: the
    side of the inputs a user's model is discovered on. ``reading``: which groups of a user's model
    share one template layer, ``modules`` (default) or ``groups`` (:mod:`.readings`)."""
    if isinstance(model, str) and registered(model) is not None:
        if fixed:
            raise UsageError(f"--fix applies to models given as package.module:function, not to {model!r}")
        if reading is not None:
            raise UsageError(
                f"--reading applies to models given as package.module:function, not to {model!r} "
                "(a built-in family has its study's template layers)"
            )
        return model
    if isinstance(model, str) and ":" not in model:
        get_family(model)  # the unknown-model error
    return load_model(model, fixed=fixed, name=name, image_size=image_size, reading=reading)
