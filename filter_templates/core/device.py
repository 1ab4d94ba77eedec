"""Which device a run uses, and how that device is named in the records (one home for both)."""

from __future__ import annotations

import functools
import os
import platform
from typing import Union

import torch

from filter_templates.core.errors import UsageError

__all__ = ["DeviceLike", "resolve_device", "device_name", "cpu_name", "cpu_has_amx", "free_memory"]

DeviceLike = Union[str, torch.device]


def resolve_device(device: DeviceLike = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) as a usable device."""
    if isinstance(device, torch.device):
        text = str(device)
    else:
        text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text in ("cpu", "meta"):
        return torch.device(text)
    if text == "cuda" or text.startswith("cuda:"):
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise UsageError(f"invalid device {device!r}; choose cpu, cuda, cuda:N or auto") from None
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available here; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise UsageError(f"unknown device {device!r}; choose cpu, cuda, cuda:N or auto")


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` ("AMD EPYC"), else what ``platform`` knows
    (``platform.processor()`` says only "x86_64" on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix products in hardware): torch's own check where
    it has one, else the ``amx_tile`` flag of ``/proc/cpuinfo``."""
    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    if callable(check):
        try:
            return bool(check())
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


def device_name(device: DeviceLike) -> str:
    """What a device is, in words: the GPU's product name or the CPU's model name -- the one name
    every record (summaries, resources, fit and templates output) uses."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def free_memory(device: DeviceLike) -> int:
    """Bytes the device could still hand out now: a GPU's free memory, or the host's
    ``MemAvailable`` (what Linux can give without swapping; page cache counts as free)."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
