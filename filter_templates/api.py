"""The method from Python, on the model objects a researcher already has.

``apply_template`` gives a fresh model of a network's shape with a template's filter counts;
``fit_budget`` the widest such model of each template within a budget (what ``fit --json``
prints). A model is named the way every command names one, or handed over as an object: an
``nn.Module`` (its architecture is used, not its weights), a callable returning one, a
``package.module:function`` string, or a built-in family name (``vgg19``, ``resnet50``, ...).
``reduce`` (fit, train, rank, export) takes a :class:`~filter_templates.reduction.ReduceRequest`,
whose ``model`` may be any of these too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch.nn as nn

from filter_templates.core.images import IMAGE_SIZE
from filter_templates.method.arch import ArchOptions, ModelLike
from filter_templates.method.fit import Budget, FitRequest, fit
from filter_templates.models import get_family
from filter_templates.models.readings import DEFAULT_READING

__all__ = ["apply_template", "fit_budget"]

DEFAULT_CLASSES = 10  # a built-in family's class count unless one is given (the built-in datasets')


def _classes(family: str, classes: Optional[int], image_size: int) -> int:
    """``classes``, or by default a user network's own output count (10 for a built-in family)."""
    if classes is not None:
        return classes
    plan = getattr(get_family(family, image_size), "plan", None)  # only a discovered network has one
    outputs = [g.base for g in plan.groups if g.role == "output"] if plan is not None else []
    return outputs[0] if outputs else DEFAULT_CLASSES


def apply_template(
    model: ModelLike,
    template: Union[str, Sequence[float], Callable[[Sequence[float]], Sequence[float]]],
    width: float,
    *,
    classes: Optional[int] = None,
    image_size: int = IMAGE_SIZE,
    divisor: int = 1,
    floor: int = 1,
    reading: str = DEFAULT_READING,
) -> nn.Module:
    """A fresh, untrained model of ``model``'s shape whose template layers follow ``template`` at
    width multiplier ``width`` (seed torch first for a repeatable initialisation).

    ``template``: a template name, explicit relative counts, or a function of the base counts.
    ``classes``: the output count (default: the network's own; 10 for a built-in family).
    ``image_size``: the side of the square images the model takes. ``divisor``: every layer a
    multiple of it; ``floor``: the smallest filter count. ``reading``: which channel groups of
    your own network share one template layer (``modules``: each residual stage and multi-branch
    module; ``groups``: every free channel group). Bad input raises :class:`UsageError`.
    """
    options = ArchOptions(divisor=divisor, floor=floor, image_size=image_size, reading=reading)
    family = options.family(model)
    return options.arch(family, template, width, _classes(family, classes, image_size)).build()


def fit_budget(
    model: ModelLike,
    budget: Union[str, Budget],
    *,
    templates: Optional[Sequence[str]] = None,
    classes: Optional[int] = None,
    image_size: int = IMAGE_SIZE,
    divisor: int = 1,
    floor: int = 1,
    reading: str = DEFAULT_READING,
) -> list[dict[str, Any]]:
    """For each template (default: every registered one), the widest model of ``model`` within
    ``budget`` (``"params=1M"``, ``"flops=100M"``, ``"memory=512MiB"``, ``"latency=5ms"``), found
    without training: one dict per template with its ``template``, ``width``, ``filters`` and
    resources, the same as ``filter-templates fit --json`` prints. The other arguments are
    :func:`apply_template`'s; memory is measured on the CPU at batch 64, latency in eager PyTorch at
    batch 1 (``filter-templates fit --runtime`` for onnxruntime or OpenVINO)."""
    options = ArchOptions(divisor=divisor, floor=floor, image_size=image_size, reading=reading)
    family = options.family(model)
    request = FitRequest(family, budget, templates, classes=_classes(family, classes, image_size), options=options)
    return [result.to_dict() for result in fit(request)]
