"""Latency in the runtime a model is deployed to: eager PyTorch, onnxruntime or OpenVINO.

A :class:`LatencySetting` says how latency is measured (runtime, images per call, threads, device,
rounds); :func:`open_runtime` checks it (an unknown runtime, or one not installed, is one
:class:`UsageError` naming the extra to install) and gives the :class:`Runtime` that opens a model
for timing: ``torch`` runs the module eagerly under ``no_grad``; ``onnxruntime`` (CPU, or its CUDA
execution provider on ``--device cuda`` where onnxruntime-gpu is installed) and ``openvino`` (CPU)
run the model exported exactly as ``export`` writes it (``onnx_model``). Models are timed together,
alternating in rounds (``deploy_timing.time_alternating``), and every figure is a record
(:meth:`Runtime.record`) carrying the runtime's name and version, threads, batch, device, median,
spread, rounds and the machine's load when it was taken: a latency means nothing without them.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from filter_templates.core import validate
from filter_templates.core.device import device_name, resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.method import deploy_timing
from filter_templates.method.deploy_timing import BLOCK_S, DEFAULT_ROUNDS, MissingRuntime
from filter_templates.method.measure import arch_shape
from filter_templates.method.onnx_model import ONNX_EXTRA, onnx_available, onnx_bytes

__all__ = [
    "RUNTIMES",
    "EXTRAS",
    "DEFAULT_ROUNDS",
    "LatencySetting",
    "Timing",
    "Runtime",
    "open_runtime",
    "time_models",
    "open_arch",
    "time_archs",
    "ranking_noise",
    "load_text",
    "separable",
]

RUNTIMES = ("torch", "onnxruntime", "openvino")
#: The optional extra that installs each runtime (torch is a dependency).
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


@dataclass(frozen=True)
class LatencySetting:
    """How latency is measured: ``runtime`` (one of :data:`RUNTIMES`), ``batch`` images per call
    (1 by default: what a deployed model serves), ``threads`` (None: torch's thread count, resolved
    by :meth:`checked` so that every record names a number), ``device``, ``rounds`` of alternating
    timing and ``block_s``, the least seconds of one timed block."""

    runtime: str = "torch"
    batch: int = 1
    threads: int | None = None
    device: str = "cpu"
    rounds: int = DEFAULT_ROUNDS
    block_s: float = BLOCK_S

    def checked(self) -> "LatencySetting":
        """This setting with its numbers checked and ``threads`` resolved; a runtime that is
        unknown, not installed or not available on ``device`` is a :class:`UsageError`."""
        if self.runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {self.runtime!r}; choose from {', '.join(RUNTIMES)}")
        validate.integer(self.batch, "latency batch")
        validate.integer(self.rounds, "latency rounds")
        validate.number(self.block_s, "latency block seconds", 0.0)
        threads = torch.get_num_threads() if self.threads is None else validate.integer(self.threads, "threads")
        dev = resolve_device(self.device)
        if self.runtime != "torch":
            if not onnx_available():
                raise UsageError(f"--runtime {self.runtime}: {ONNX_EXTRA}")
            try:
                deploy_timing.runtime_version(self.runtime)
            except MissingRuntime:
                raise UsageError(
                    f"--runtime {self.runtime} needs the {EXTRAS[self.runtime]} extra: "
                    f"pip install 'filter-templates[{EXTRAS[self.runtime]}]'"
                ) from None
            if dev.type == "cuda" and (self.runtime == "openvino" or not deploy_timing.cuda_provider_available()):
                raise UsageError(
                    f"--runtime {self.runtime} cannot run on {dev}: "
                    + (
                        "OpenVINO runs on the CPU here"
                        if self.runtime == "openvino"
                        else "onnxruntime here has no CUDA execution provider (install onnxruntime-gpu)"
                    )
                )
        return replace(self, threads=threads, device=str(dev))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """One model's latency: median and spread (inter-quartile range over rounds) of one call."""

    median_s: float
    spread_s: float
    rounds: int


def separable(a: Timing, b: Timing) -> bool:
    """Whether two timings differ by more than either one's spread (else their order is noise)."""
    return abs(a.median_s - b.median_s) > max(a.spread_s, b.spread_s)


class Runtime:
    """Opens models for timing in one runtime, with a checked :class:`LatencySetting`."""

    name: ClassVar[str]

    def __init__(self, setting: LatencySetting) -> None:
        self.setting = setting
        self.version = self._version()
        self.device = resolve_device(setting.device)

    def _version(self) -> str:
        return deploy_timing.runtime_version(self.name)

    def open(self, model: nn.Module, image_size: int) -> Callable[[], object]:
        """A call running ``model`` once on a batch of ``setting.batch`` images of ``image_size``."""
        shape = (self.setting.batch, 3, image_size, image_size)
        cuda = self.device.type == "cuda"
        assert self.setting.threads is not None  # resolved by LatencySetting.checked
        return deploy_timing.open_model(self.name, onnx_bytes(model, image_size), shape, self.setting.threads, cuda)

    def record(self, timing: Timing) -> dict[str, Any]:
        """The latency record every figure carries: runtime, version, threads, batch, device,
        median, spread, rounds, the machine and its load."""
        where = deploy_timing.machine()
        return {
            "runtime": self.name,
            "version": self.version,
            "threads": self.setting.threads,
            "batch": self.setting.batch,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "median_s": timing.median_s,
            "spread_s": timing.spread_s,
            "rounds": timing.rounds,
            "cores": where["cores"],
            "load": where["load"],
        }


class TorchRuntime(Runtime):
    """Eager PyTorch: the module itself, in eval mode under ``no_grad``, on ``device``."""

    name = "torch"

    def _version(self) -> str:
        return torch.__version__

    def open(self, model: nn.Module, image_size: int) -> Callable[[], object]:
        model = copy.deepcopy(model).to(self.device).eval()
        x = torch.randn(self.setting.batch, 3, image_size, image_size, device=self.device)
        cuda = self.device.type == "cuda"

        def call() -> object:
            with torch.no_grad():
                out = model(x)
            if cuda:
                torch.cuda.synchronize(self.device)
            return out

        return call


class OnnxRuntime(Runtime):
    """onnxruntime on the exported model: CPU, or the CUDA execution provider on a CUDA device."""

    name = "onnxruntime"


class OpenVinoRuntime(Runtime):
    """OpenVINO on the exported model, compiled for the CPU with the latency hint."""

    name = "openvino"


_CLASSES: dict[str, type[Runtime]] = {c.name: c for c in (TorchRuntime, OnnxRuntime, OpenVinoRuntime)}


def open_runtime(setting: LatencySetting) -> Runtime:
    """The runtime ``setting`` names, checked (see :meth:`LatencySetting.checked`)."""
    checked = setting.checked()
    return _CLASSES[checked.runtime](checked)


def time_models(runtime: Runtime, calls: Sequence[Callable[[], object]], rounds: int | None = None) -> list[Timing]:
    """Every call timed alternately in rounds (``deploy_timing.time_alternating``) at the setting's
    threads; torch's process-wide thread count is restored afterwards."""
    s = runtime.setting
    n = s.rounds if rounds is None else rounds
    before = torch.get_num_threads()
    assert s.threads is not None
    torch.set_num_threads(s.threads)  # eager torch's pool; the other runtimes were opened with their own
    try:
        timed = deploy_timing.time_alternating(calls, n, s.block_s)
    finally:
        torch.set_num_threads(before)
    return [Timing(m, spread, n) for m, spread in timed]


def open_arch(runtime: Runtime, arch: Any) -> Callable[[], object]:
    """``arch``'s model (built on the CPU under a fixed seed, without moving the caller's random
    stream: timing must not change what is trained afterwards) opened in ``runtime``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = arch.build().eval()
    return runtime.open(model, arch.image_size)


def time_archs(runtime: Runtime, archs: Sequence[Any]) -> list[dict[str, Any]]:
    """The latency record of every architecture's model, timed together and alternately (a model
    two architectures share is opened once)."""
    calls: dict[bytes, Callable[[], object]] = {}
    for arch in archs:
        key = arch_shape(arch).signature
        if key not in calls:
            calls[key] = open_arch(runtime, arch)
    timed = dict(zip(calls, time_models(runtime, list(calls.values()))))
    return [runtime.record(timed[arch_shape(a).signature]) for a in archs]


def ranking_noise(names: Sequence[str], records: Sequence[dict[str, Any]]) -> str | None:
    """One line naming the neighbours in latency order whose difference is under their spread (their
    order is noise), or None when every neighbour is separable."""
    order = sorted(range(len(records)), key=lambda i: records[i]["median_s"])
    close = []
    for i, j in zip(order, order[1:]):
        a, b = (Timing(records[k]["median_s"], records[k]["spread_s"], records[k]["rounds"]) for k in (i, j))
        if not separable(a, b):
            close.append(f"{names[i]} ~ {names[j]}")
    if not close:
        return None
    return f"latency differences under the timing spread, their order is noise: {', '.join(close)}" + load_text(
        records[0]
    )


def load_text(record: dict[str, Any]) -> str:
    """`` (load L on N cores)``: how busy the machine was when a record was taken."""
    load = record.get("load")
    return f" (load {load:.1f} on {record.get('cores')} cores)" if load is not None else ""
