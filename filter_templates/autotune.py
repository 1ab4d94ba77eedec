"""Measured execution settings: precision (fp32 / bf16 autocast), memory format, CPU threads.

Why measure instead of reading CPU flags: bf16 autocast was 1.4x faster than fp32 on a CPU with
AMX, but 0.8x on one with AVX512-BF16 and no AMX, and slower still on AVX2; channels_last won on
both. Threads likewise: on 2 cores shared with other work, two OpenMP threads of one process ran
10-20x slower than one. So the first time a (device, model, batch size) is trained, a few steps of
each candidate are timed on random data and the fastest is kept, at most ``BUDGET_S`` seconds in
all. The answer is cached in ``<cache home>/execution.json`` (the cache home of
:mod:`filter_templates.data.cache`), so later runs of the same model pay nothing; a corrupt cache
file is ignored with a note and rewritten. A model whose single step is too slow to time every
candidate within the budget gets the device's default (``DEFAULTS``), marked ``"default"``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .arch import Arch
from .data.cache import fallback_root
from .device import device_name
from .messages import note
from .rundir import atomic_write_json

__all__ = ["PRECISIONS", "MEMORY_FORMATS", "BUDGET_S", "Choice", "choose", "choose_threads", "bf16_probe",
           "cache_path", "torch_memory_format"]

PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("channels_last", "contiguous")
BUDGET_S = 3.0  # all measurements for one new model, threads included
#: A cached thread choice is measured again when the load average has moved by this many cores since:
#: here one thread trained 9x faster than two under load, which says nothing about the free machine.
LOAD_CHANGE = 1.0
CACHE_FILE = "execution.json"
CACHE_VERSION = 1
#: What a device gets when a model is too slow to measure within the budget.
DEFAULTS = {"cpu": ("fp32", "channels_last"), "cuda": ("bf16", "channels_last")}
#: The batch a CPU measurement falls back to when one step at the real batch does not fit the budget.
CPU_MEASURE_BATCH = 8
#: Part of every cache key: entries measured another way (before v2: always at batch 8 on a CPU) are not reused.
MEASURE_METHOD = 2
BF16_PROBE_MARGIN = 0.9  # bf16 stays a candidate when the probe finds it at least this fast relative to fp32
_MEMO: dict[str, dict] = {}  # this process's answers: a sweep asks once per model


@dataclass(frozen=True)
class Choice:
    """How a run executes. ``source``: ``measured`` (now), ``cache`` (an earlier measurement),
    ``given`` (the caller fixed both), ``checkpoint`` (a resumed run keeps its own), ``default``."""

    precision: str
    memory_format: str
    source: str
    images_per_s: dict[str, float] = field(default_factory=dict)  # per variant, when measured
    bf16_probe: dict[str, float] = field(default_factory=dict)  # the device's one-layer fp32/bf16 probe

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_memory_format(name: str) -> torch.memory_format:
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def cache_path() -> Path:
    return fallback_root() / CACHE_FILE


def _read_cache() -> dict[str, Any]:
    path = cache_path()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        note(f"ignoring unreadable measurement cache {path} ({type(exc).__name__}); measuring again")
        return {}
    if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION or not isinstance(doc.get("entries"), dict):
        note(f"ignoring measurement cache {path} of another format; measuring again")
        return {}
    return doc["entries"]


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    entries = _read_cache()
    entries[key] = entry
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError as exc:  # a read-only home must not stop training: the choice is still used
        note(f"cannot write the measurement cache {path} ({exc.strerror or exc}); it is used for this run only")


def _key(kind: str, arch: Arch | None, device: torch.device, batch_size: int, threads: int | None) -> str:
    ident = {"kind": kind, "device": device.type, "device_name": device_name(device), "torch": torch.__version__,
             "cpus": os.cpu_count(), "batch_size": batch_size, "threads": threads, "method": MEASURE_METHOD}
    if arch is not None:
        ident.update(family=arch.family, filters=list(arch.filters), classes=arch.classes,
                     stem_width=arch.stem_width, divisor=arch.divisor, floor=arch.floor)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _lookup(key: str) -> dict | None:
    if key in _MEMO:
        return _MEMO[key]
    entry = _read_cache().get(key)
    rates = entry.get("images_per_s") if isinstance(entry, dict) else None
    if isinstance(rates, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                       for v in rates.values()):
        _MEMO[key] = entry
        return entry
    return None


def _remember(key: str, entry: dict) -> None:
    _MEMO[key] = entry
    _write_cache(key, entry)


class _Bench:
    """Times SGD steps of one model on one random batch, in any precision and memory format, at the
    batch training will use (see :func:`_bench`): the ranking depends on it. Measured here (AMD EPYC,
    2 threads, VGG-19 w0.25): contiguous beat channels_last 1.17x at batch 8, channels_last won 1.12x
    at batch 64; two threads gained 1.35x over one at batch 8, 1.76x at batch 64."""

    def __init__(self, arch: Arch, device: torch.device, batch_size: int) -> None:
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            self.model = arch.build().to(device)
        self.x = torch.randn((batch_size, 3, 32, 32), generator=g).to(device)
        self.y = torch.randint(0, arch.classes, (batch_size,), generator=g).to(device)
        self.device = device
        self._variants: dict[tuple[str, str], tuple] = {}

    def step_seconds(self, precision: str, memory_format: str, steps: int) -> float:
        """The fastest of ``steps`` timed steps (the fastest: other work on a shared machine only ever
        adds time); a variant's first call runs one untimed warm-up step first."""
        variant = self._variants.get((precision, memory_format))
        if variant is None:
            fmt = torch_memory_format(memory_format)
            model = copy.deepcopy(self.model).to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            variant = self._variants[(precision, memory_format)] = (model, opt, self.x.contiguous(memory_format=fmt))
            self._step(precision, *variant)
        best = float("inf")
        for _ in range(steps):
            t0 = time.perf_counter()
            self._step(precision, *variant)
            best = min(best, time.perf_counter() - t0)
        return best

    def _step(self, precision: str, model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), self.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warmed(self, precision: str, memory_format: str) -> bool:
        return (precision, memory_format) in self._variants


def _bench(arch: Arch, device: torch.device, batch_size: int, precision: str, memory_format: str,
           budget: float) -> tuple[_Bench, float]:
    """A warmed-up bench at ``batch_size`` and the time of one step of the given variant; on a CPU,
    a model whose step at that batch takes over a quarter of ``budget`` is timed at
    ``CPU_MEASURE_BATCH`` instead (a rough ranking beats no measurement)."""
    fallback = device.type == "cpu" and batch_size > CPU_MEASURE_BATCH
    for batch in (batch_size, CPU_MEASURE_BATCH) if fallback else (batch_size,):
        bench = _Bench(arch, device, batch)
        bench.step_seconds(precision, memory_format, steps=0)  # warm-up; a process's first step also pays
        first = bench.step_seconds(precision, memory_format, steps=1)  # one-off start-up: not counted
        if first <= budget / 4:
            break
    return bench, first


def _steps_within(seconds_per_step: float, variants: int, unwarmed: int, budget: float) -> int:
    """Timed steps per variant that fit ``budget``, each variant not yet run also paying a warm-up step."""
    return min(5, int((budget / seconds_per_step - unwarmed) / variants))


def choose(arch: Arch, device: torch.device, batch_size: int, *, precision: str = "auto",
           memory_format: str = "auto", budget: float = BUDGET_S * 2 / 3) -> Choice:
    """The precision and memory format to train ``arch`` with on ``device`` at ``batch_size``:
    the caller's where not ``"auto"``, else the fastest measured (cached per device and model, at
    the current thread count). bf16 is a candidate where a one-layer probe of the device (cached
    per device) finds it at least ``BF16_PROBE_MARGIN`` as fast as fp32: where it is emulated
    (5-10x slower, measured on AVX2) a whole-model bf16 step would not fit the budget at all."""
    if precision != "auto" and memory_format != "auto":
        return Choice(precision, memory_format, "given")
    probe: dict[str, float] = {}
    if precision != "auto":
        precisions: tuple[str, ...] = (precision,)
    elif device.type not in DEFAULTS or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        precisions = ("fp32",)
    else:
        probe = bf16_probe(device)
        precisions = PRECISIONS if probe["bf16"] >= BF16_PROBE_MARGIN * probe["fp32"] else ("fp32",)
    cands = [(p, m) for p in precisions for m in (MEMORY_FORMATS if memory_format == "auto" else (memory_format,))]
    if len(cands) == 1:
        return Choice(*cands[0], "measured" if probe else "given", {}, probe)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    key = _key("precision+format", arch, device, batch_size, threads)
    entry = _lookup(key)
    source = "cache"
    if entry is None or not all(f"{p}/{m}" in entry["images_per_s"] for p, m in cands):
        entry = _measure(arch, device, batch_size, cands, budget)
        if entry["images_per_s"]:
            _remember(key, entry)
        source = "measured" if entry["images_per_s"] else "default"
    rates = {k: v for k, v in entry["images_per_s"].items() if tuple(k.split("/")) in cands}
    if not rates:
        dp, dm = DEFAULTS.get(device.type, ("fp32", "contiguous"))
        return Choice(precisions[0] if len(precisions) == 1 else dp, memory_format if memory_format != "auto" else dm,
                      "default", {}, probe)
    best = max(rates, key=rates.get)
    p, m = best.split("/")
    return Choice(p, m, source, rates, probe)


def bf16_probe(device: torch.device, reps: int = 3) -> dict[str, float]:
    """Images/s of one 3x3 convolution (32 -> 32 channels, 16x16, batch 16, forward and backward,
    channels_last) in fp32 and under bf16 autocast: does this device do bf16 natively? Cached per
    device; costs well under a second."""
    key = _key("bf16-probe", None, device, 16, torch.get_num_threads() if device.type == "cpu" else None)
    entry = _lookup(key)
    if entry is not None and {"fp32", "bf16"} <= set(entry["images_per_s"]):
        return dict(entry["images_per_s"])
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device=device, memory_format=torch.channels_last)
    x = torch.randn((16, 32, 16, 16), generator=g).to(device).contiguous(memory_format=torch.channels_last)
    rates = {}
    for precision in PRECISIONS:
        best = float("inf")
        for i in range(reps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = conv(x.requires_grad_(False))
            out.float().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                best = min(best, time.perf_counter() - t0)
        rates[precision] = round(16 / best, 1)
    _remember(key, {"images_per_s": rates, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return rates


def _measure(arch: Arch, device: torch.device, batch_size: int, cands: list[tuple[str, str]],
             budget: float) -> dict:
    bench, first = _bench(arch, device, batch_size, *cands[0], budget)
    t0 = time.perf_counter() - first  # counted from the timed step on: warm-ups are not (see _bench)
    steps = _steps_within(first, len(cands), len(cands) - 1, budget - (time.perf_counter() - t0))
    if steps < 1:
        return {"images_per_s": {}}
    rates = {}
    for p, m in cands:
        if (p, m) == cands[0]:  # already warmed up and timed once
            seconds = min(first, bench.step_seconds(p, m, steps - 1))
        else:
            seconds = bench.step_seconds(p, m, steps)
        rates[f"{p}/{m}"] = round(bench.batch_size / seconds, 1)
    return {"images_per_s": rates, "batch_size": bench.batch_size, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 3), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _busy_cores() -> float | None:
    """How many cores other work keeps busy now (the 1-minute load average), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def _load_moved(entry: dict, load: float | None) -> bool:
    """Whether a cached thread choice was measured under another load than now's (or an unrecorded one)."""
    then = entry.get("busy_cores")
    if load is None:
        return False
    return not isinstance(then, (int, float)) or abs(load - then) >= LOAD_CHANGE


def choose_threads(arch: Arch, device: torch.device, batch_size: int, budget: float = BUDGET_S / 3) -> tuple[int, str]:
    """The CPU thread count that trains ``arch`` fastest here, as ``(threads, source)``: 1 or all
    cores, measured once per model (fp32, channels_last) and cached with the load average it was
    measured under, and measured again when the load has since moved by ``LOAD_CHANGE`` cores or more;
    ``$OMP_NUM_THREADS``, when set, is the user's choice and is kept. Leaves torch set to the answer."""
    cpus = max(1, os.cpu_count() or 1)
    if device.type != "cpu" or cpus == 1:
        return torch.get_num_threads(), "device"
    if os.environ.get("OMP_NUM_THREADS"):  # the user's own choice
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    key = _key("threads", arch, device, batch_size, None)
    entry = _lookup(key)
    source = "cache"
    load = _busy_cores()
    if entry is not None and _load_moved(entry, load):
        entry = None
    if entry is None:
        bench, _ = _bench(arch, device, batch_size, "fp32", "channels_last", budget)
        rates = {}
        t0 = time.perf_counter()
        for n in (1, cpus):
            torch.set_num_threads(n)
            first = bench.step_seconds("fp32", "channels_last", steps=1)  # also lets a new thread pool start
            more = _steps_within(first, 1, 0, budget / 2 - (time.perf_counter() - t0) + (budget / 2 if n > 1 else 0))
            seconds = min(first, bench.step_seconds("fp32", "channels_last", more)) if more >= 1 else first
            rates[str(n)] = round(bench.batch_size / seconds, 1)
        entry = {"images_per_s": rates, "batch_size": bench.batch_size, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if load is not None:
            entry["busy_cores"] = round(load, 2)
        _remember(key, entry)
        source = "measured"
    rates = {k: v for k, v in entry["images_per_s"].items() if k.isdigit() and 1 <= int(k) <= cpus}
    threads = int(max(rates, key=rates.get)) if rates else 1
    torch.set_num_threads(threads)
    return threads, source
