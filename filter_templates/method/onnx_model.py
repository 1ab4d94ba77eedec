"""A model as ONNX: the one exporter that ``export`` (a trained run's file) and the latency runtimes
(the model a runtime times, see ``runtimes``) share, so the model timed is the model deployed.

Torch's dynamo exporter, with a dynamic batch dimension; input ``input`` float NCHW at the model's
image size, output ``logits``. The ``onnx`` extra (onnx and onnxscript, what the exporter needs) is
optional, so it is imported here, only when ONNX is asked for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import IO, Any

import torch
import torch.nn as nn

from filter_templates.core.errors import UsageError

__all__ = ["ONNX_EXTRA", "onnx_available", "example_input", "write_onnx", "onnx_bytes"]

ONNX_EXTRA = "ONNX export needs the onnx extra: pip install 'filter-templates[onnx]' (onnx, onnxscript, onnxruntime)"


def _import_onnx() -> Any | None:
    """The ``onnx`` module, or None when the onnx extra is not installed."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError:
        return None
    return onnx


def onnx_available() -> bool:
    """Whether the onnx extra (what torch's ONNX exporter needs) is installed."""
    return _import_onnx() is not None


def example_input(image_size: int) -> torch.Tensor:
    """The example batch the exporter traces with: two images (a batch of one would let the exporter
    specialise the batch dimension) at ``image_size``."""
    return torch.zeros(2, 3, image_size, image_size)


def write_onnx(model: nn.Module, example: torch.Tensor, f: IO[bytes]) -> None:
    """``model`` (in eval mode) as ONNX into ``f``, batch dimension dynamic."""
    onnx = _import_onnx()
    if onnx is None:
        raise UsageError(ONNX_EXTRA)

    batch = torch.export.Dim("batch", min=1)
    # The dynamo exporter (the only one torch >= 2.9 keeps) chats on stdout and logs missing torchvision
    # ops; keep stdout clean for callers that print JSON.
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    finally:
        log.setLevel(level)
    assert program is not None  # torch.onnx.export returns None only for the legacy (dynamo=False) exporter
    onnx.save(program.model_proto, f)


def onnx_bytes(model: nn.Module, image_size: int) -> bytes:
    """``model`` exported exactly as ``export`` writes it, as bytes."""
    buf = io.BytesIO()
    write_onnx(model.eval(), example_input(image_size), buf)
    return buf.getvalue()
