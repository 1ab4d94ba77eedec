"""Importing torchvision (and timm, which imports it) where its compiled operators cannot load.

PyPI's torchvision wheel is built against a CUDA torch. Beside a CPU-only torch its C++ library does
not load, and ``import torchvision`` then fails registering a fake kernel for ``torchvision::nms``:
the only two operators (``nms``, ``qnms``) it registers without first checking that the library
loaded. timm imports torchvision, so every timm model fails the same way. Classification networks
call none of these operators.

:func:`import_module` imports a model's module; when that fails on a missing ``torchvision::``
operator it declares the two schemas torchvision expects (no kernel behind them), says so on stderr,
and imports again. Nothing is hidden: torchvision's own check still reports that its C++ operators
are absent, and calling ``nms`` or any other detection operator raises torchvision's error. Where
the library loads (a matching torch), the first import succeeds and nothing is declared.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

from filter_templates.core.messages import note

__all__ = ["import_module", "declare_missing_ops"]

# The schemas torchvision registers fake kernels for unconditionally (torchvision/_meta_registrations.py).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY: list[torch.library.Library] = []  # kept alive: dropping it would remove the schemas


def _missing_op(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "operator torchvision::" in str(exc) and "does not exist" in str(exc)


def _declared(op: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{op}", "")
    except RuntimeError:
        return False
    return True


def declare_missing_ops() -> bool:
    """Declare ``torchvision::nms``/``qnms`` without kernels when they do not exist; True if declared."""
    if _LIBRARY:
        return False
    missing = [s for s in _SCHEMAS if not _declared(s.partition("(")[0])]
    if not missing:
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        lib.define(schema)
    _LIBRARY.append(lib)
    return True


def import_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``, retried once after :func:`declare_missing_ops` when it fails
    on torchvision's missing operators (the partial imports are dropped first)."""
    try:
        return importlib.import_module(name)
    except RuntimeError as exc:
        if not _missing_op(exc) or not declare_missing_ops():
            raise
    note(
        "torchvision's C++ operators did not load (its wheel was built for another torch); "
        "its classification models import, its detection operators (nms, roi_align) raise if called"
    )
    for key in [k for k in sys.modules if k.partition(".")[0] in ("torchvision", name.partition(".")[0])]:
        del sys.modules[key]
    return importlib.import_module(name)
