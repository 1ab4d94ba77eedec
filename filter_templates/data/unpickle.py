"""A restricted unpickler for the official CIFAR archives.

The CIFAR "python version" files are pickles, and a pickle can call any importable function. These
files only ever need plain containers, strings/bytes, ints and numpy arrays, so :func:`load` admits
exactly the three globals that rebuild a numpy array and refuses everything else *before* calling
it. That keeps a crafted file from running code.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np

from filter_templates.core.errors import UsageError

__all__ = ["load", "ALLOWED_GLOBALS"]


def _reconstruct_fn() -> Any:
    # numpy >= 2 moved the implementation to numpy._core; importing numpy.core there only warns.
    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]
    return _reconstruct


# (module, name) -> object. Python-2-era files name numpy.core.multiarray; numpy >= 2 writes numpy._core.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_fn(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_fn(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that a CIFAR file never needs."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load(fileobj: IO[bytes] | bytes, label: str) -> Any:
    """Unpickle one CIFAR batch/meta file. ``label`` names the file in every error message.

    ``encoding="bytes"`` keeps Python 2 ``str`` objects as ``bytes`` (keys like ``b"data"``), which
    is how the original files must be read; callers accept str or bytes keys.
    """
    if isinstance(fileobj, (bytes, bytearray)):
        fileobj = io.BytesIO(fileobj)
    try:
        return _Restricted(fileobj, encoding="bytes").load()
    except RefusedGlobal as exc:
        raise UsageError(
            f"{label}: refusing to unpickle it: it references {exc}, which a CIFAR file "
            f"never contains (only numpy arrays, lists, dicts, strings and numbers are admitted)"
        ) from None
    except Exception as exc:  # untrusted input: any failure to parse means a bad file, not a bug here
        raise UsageError(f"{label}: not a readable CIFAR pickle (truncated or corrupt?): {exc}") from None
