"""How a run executes: precision (fp32 / bf16 autocast), memory format, CPU threads and
whether the training step is compiled (``torch.compile``).

Each of them changes the numbers a run produces (another kernel, another rounding, another
split of every reduction over the threads), so none is picked by a timing during a run: a timing
moves with the load on the machine, and the same command would then train different weights from
one run to the next. They come from the user (``--precision``, ``--memory-format``, ``--threads``,
``--compile``), from a resumed run's checkpoint, from a machine profile that ``filter-templates
tune`` measured on purpose and wrote to a file (:mod:`.profile`: a file, not a timing, so the same
command still trains the same weights), or from :func:`rule` and :func:`threads_for`, which read
only what the device is:

- CUDA: bf16 autocast where the GPU supports it, channels_last (tensor cores want NHWC).
- A CPU with AMX: bf16 autocast and channels_last. AMX runs bf16 matrix products in hardware
  (a VGG-19 step was measured 1.4x fp32 on one).
- Any other CPU: fp32, channels_last. Without AMX, bf16 autocast measured anywhere from 0.14x
  fp32 (AVX2) to faster than fp32 (some AVX512-BF16 CPUs), so no flag short of AMX says it pays;
  ``benchmarks/throughput.py --mode rule`` measures what the rule costs against the fastest
  variant on a given machine.
- Threads: the cores this process may run on (its CPU affinity), divided among the runs a
  sweep trains side by side; ``$OMP_NUM_THREADS``, when set, is the user's choice and is kept.

bf16 is a rule only because it trains as well as fp32 with the fast recipe's starts (see
:mod:`.initialise` and ``tests/test_reproducible.py``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch

from filter_templates.core.device import cpu_has_amx
from filter_templates.core.errors import UsageError
from filter_templates.core.load import usable_cores

__all__ = [
    "Execution",
    "Choice",
    "rule",
    "choose",
    "usable_cores",
    "threads_for",
    "torch_memory_format",
    "make_deterministic",
    "check_compile",
    "compiled",
]


@dataclass(frozen=True)
class Execution:
    """The settings a machine profile keeps: what ``tune`` measured fastest on a machine."""

    precision: str
    memory_format: str
    threads: int
    compile: bool


@dataclass(frozen=True)
class Choice:
    """How a run executes. ``source``: ``rule`` (:func:`rule`), ``profile`` (a machine profile),
    ``given`` (the caller fixed precision and memory format), ``given+rule`` / ``given+profile``
    (one of them), ``checkpoint`` (a resumed run keeps its own); ``reason``: the device property
    the rule read; ``profile``: the profile file read, when one was; ``threads_source``: who set
    ``threads`` (``--threads``, ``checkpoint``, ``rule``, ``profile``, ``OMP_NUM_THREADS``, ...);
    ``compile``: whether the training step is compiled (``compile_source`` says who decided)."""

    precision: str
    memory_format: str
    source: str
    reason: str = ""
    threads: int | None = None
    threads_source: str | None = None
    compile: bool = False
    compile_source: str = "default"
    profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_memory_format(name: str) -> torch.memory_format:
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def rule(device: torch.device) -> tuple[str, str, str]:
    """``(precision, memory_format, reason)`` for ``device``, from what it is and nothing else."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "channels_last", "CUDA with bf16"
        return "fp32", "channels_last", "CUDA without bf16"
    if device.type == "cpu" and cpu_has_amx():
        return "bf16", "channels_last", "CPU with AMX"
    return "fp32", "channels_last", f"{device.type.upper()} without AMX"


def choose(
    device: torch.device,
    precision: str = "auto",
    memory_format: str = "auto",
    compile: bool | None = None,
    profile: tuple[Execution, str] | None = None,
) -> Choice:
    """The caller's precision, memory format and compile where given (not ``"auto"`` / None), else
    the ``profile``'s (its settings and the file they were read from), else :func:`rule`'s (and no
    compile). Threads are :func:`threads_for`'s business: the caller sets them."""
    if profile is not None:
        settings, path = profile
        p, m, c, default, reason = settings.precision, settings.memory_format, settings.compile, "profile", ""
    else:
        (p, m, reason), c, default, path = rule(device), False, "rule", None
    if precision != "auto" and memory_format != "auto":
        source, reason = "given", ""
    else:
        source = default if precision == "auto" and memory_format == "auto" else f"given+{default}"
    return Choice(
        p if precision == "auto" else precision,
        m if memory_format == "auto" else memory_format,
        source,
        reason,
        compile=c if compile is None else bool(compile),
        compile_source=("profile" if profile is not None else "default") if compile is None else "given",
        profile=path,
    )


def threads_for(device: torch.device, jobs: int = 1, cores: int | None = None) -> tuple[int, str]:
    """``(threads, source)``: the one rule for torch's CPU thread count of a run, when neither
    ``--threads`` nor a checkpoint fixes it. ``cores``: the cores granted to this run by a
    scheduler (Ray's CPUs per trial, Slurm's CPUs per task; default :func:`usable_cores`);
    ``jobs``: how many runs share them side by side (a local sweep's ``--jobs``), each getting an
    equal share, at least one. ``$OMP_NUM_THREADS``, when set, wins. It reads no load and no
    timing: the same command gets the same count, so the same numbers."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    have = usable_cores() if cores is None else max(1, int(cores))
    source = "rule" if jobs <= 1 else f"rule ({jobs} jobs)"
    return max(1, have // max(1, jobs)), source if cores is None else f"{source}, {have} cores granted"


def make_deterministic(device: torch.device) -> None:
    """Deterministic kernels from here on: on CUDA no cuDNN algorithm picked by timing
    (``cudnn.benchmark``) and deterministic cuBLAS workspaces; ops without a deterministic
    version warn instead of failing. Process-wide, as torch's settings are."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def check_compile(device: torch.device) -> None:
    """Refuse ``--compile`` where it cannot work, before a run writes anything: on a CPU torch's
    inductor builds C++ and needs a compiler on PATH."""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++")):
        raise UsageError(
            "--compile on a CPU needs a C++ compiler (g++ or clang++) on PATH; install one or drop --compile"
        )


def compiled(model: torch.nn.Module, on: bool | None) -> torch.nn.Module:
    """``model`` as the training step calls it: itself, or with ``on`` ``torch.compile``'s wrapper
    (the same parameters; its forward and backward run as generated kernels, compiled on the
    first step, which is why :func:`check_compile` comes first)."""
    # torch.compile's stubs say a callable; given a Module it returns an OptimizedModule, a Module
    return cast(torch.nn.Module, torch.compile(model)) if on else model
