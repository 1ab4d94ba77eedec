"""filter-templates: shrink CNNs without a search loop.

The flow: ``templates`` (pure arithmetic) -> ``models`` (families) -> ``arch`` (a buildable record)
-> ``measure`` / ``fit`` (resources, budgets) -> ``data`` -> ``train`` -> ``sweep`` -> ``report``.
"""

from .arch import Arch, make_arch
from .errors import UsageError
from .templates import distribute, register_template, template_names

__version__ = "0.1.0"
__all__ = ["Arch", "make_arch", "UsageError", "distribute", "register_template", "template_names", "__version__"]
