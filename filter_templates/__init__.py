"""filter-templates: shrink CNNs without a search loop.

The flow: ``templates`` (pure arithmetic) -> ``models`` (families) -> ``arch`` (a buildable record)
-> ``measure`` / ``fit`` (resources, budgets) -> ``data`` -> ``train`` -> ``sweep`` -> ``report``.

Names are imported lazily so that ``import filter_templates.method.templates`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Arch": "method.arch",
    "make_arch": "method.arch",
    "UsageError": "core.errors",
    "distribute": "method.templates",
    "register_template": "method.templates",
    "template_names": "method.templates",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
