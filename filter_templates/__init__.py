"""filter-templates: shrink CNNs without a search loop.

From Python: ``apply_template`` (a model object at a template and width), ``fit_budget`` (every
template's widest model within a budget), ``reduce`` (fit, train, rank and export: the method as
one call), ``make_arch`` (the JSON-able record of one templated model) and the template registry.
docs/api.md walks through them.

Names are imported on first use (``_EXPORTS``: name -> the module that defines it), so that
``filter-templates --help`` and ``import filter_templates.method.templates`` stay free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "apply_template": "filter_templates.api",
    "fit_budget": "filter_templates.api",
    "reduce": "filter_templates.reduction",
    "ReduceRequest": "filter_templates.reduction",
    "ReduceResult": "filter_templates.reduction",
    "Arch": "filter_templates.method.arch",
    "make_arch": "filter_templates.method.arch",
    "ArchOptions": "filter_templates.method.arch",
    "Budget": "filter_templates.method.fit",
    "parse_budget": "filter_templates.method.fit",
    "UsageError": "filter_templates.core.errors",
    "distribute": "filter_templates.method.templates",
    "register_template": "filter_templates.method.templates",
    "template_names": "filter_templates.method.templates",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
