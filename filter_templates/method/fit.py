"""Fit a budget: for each template, the largest width multiplier whose rounded
model stays within a budget on one resource, found without training anything.

Every probe builds the real, rounded model of ``make_arch(family, template, w)`` (on the meta
device for parameters, FLOPs and the CPU memory account, so a probe costs milliseconds; on the
target device for CUDA memory) and compares its resource with the budget:

* bracket: from a first guess, step up (or down) by a growing factor until one width fits and a
  larger one does not; widths are capped at ``max_width`` (default: ``models.MAX_WIDTH``, lowered
  per template so that no layer passes ``models.MAX_FILTERS``), and a budget that even the capped
  width meets is reported with ``capped=True`` and a note;
* bisection on the real rounded model until the bracket is narrower than ``1e-4`` relative, so
  the answer is the largest width that
  fits up to that precision; the reported width is the shortest decimal inside the final bracket
  that builds the *same* model as the bisection's answer;
* resources only change when a rounded count changes, so identical models (same parameter
  shapes) are measured once per fit.

Parameters, FLOPs and memory only grow with every filter count, so they are monotone in ``w``
as long as the model's structure stays the same. A ResNet's projection shortcut exists only where
a block's input and output widths differ, and rounding can make neighbouring blocks equal at one
width and different at the next, so the cost can dip again just above the boundary (seen with
negative-quadratic at widths below about 0.05). When the probes within 25% of the boundary built
more than one structure, the fitter also scans 10% above the boundary in 0.5% steps and goes on
from any width that fits again.

A latency budget is fitted in the runtime the model deploys to, on a grid of width steps, by
``latency_fit`` (timing is slow and noisy: its search predicts from FLOPs instead of bisecting and
refuses to answer from noise). CUDA memory probes stop at models over ``MAX_REAL_PARAMS``
parameters: building bigger ones is not practical.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from filter_templates.core import units, validate
from filter_templates.core.device import resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.progress import Progress
from filter_templates.method import measure
from filter_templates.method.arch import Arch, ArchOptions
from filter_templates.method.latency_fit import LatencyFitter, Unreachable
from filter_templates.method.latency_table import LatencyTable
from filter_templates.method.measure import arch_shape
from filter_templates.method.runtimes import LatencySetting, open_runtime, time_archs
from filter_templates.method.templates import template_names
from filter_templates.models import MAX_FILTERS, MAX_WIDTH, get_family

__all__ = ["Budget", "parse_budget", "FitRequest", "FitResult", "fit", "KEYS", "LATENCY_TOLERANCE", "format_value"]

KEYS = ("params", "flops", "memory", "latency")
LATENCY_TOLERANCE = 0.03
MAX_REAL_PARAMS = 200_000_000
W_TINY = 1e-6  # every layer (and the stem) rounds to the floor here: the smallest reachable model
EXACT_REL_TOL = 1e-4
SCAN_STEP = 0.005
SCAN_STEPS = 20

_COUNT = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTES = {**_COUNT, "ki": 1024.0, "mi": 1024.0**2, "gi": 1024.0**3, "ti": 1024.0**4}
_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Zµ]*)\s*$")
_HELP = {
    "params": "a count with an optional K/M/G/T suffix (1000-based), e.g. params=5e6 or params=1.5M",
    "flops": "a count with an optional K/M/G/T suffix (1000-based), e.g. flops=100M",
    "memory": "bytes with an optional K/M/G/T suffix (1000-based) or Ki/Mi/Gi/Ti (1024-based), "
    "optionally followed by B, e.g. memory=512M or memory=2GiB",
    "latency": "seconds with an optional s/ms/us suffix, e.g. latency=20ms or latency=0.02",
}


@dataclass(frozen=True)
class Budget:
    """A limit on one resource: ``key`` in :data:`KEYS`, ``value`` in counts, bytes or seconds."""

    key: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        v: Union[int, float] = self.value
        if self.key != "latency" and float(self.value).is_integer():
            v = int(self.value)
        return {"key": self.key, "value": v}

    def __str__(self) -> str:
        return f"{self.key}={format_value(self.key, self.value)}"

    def limit(self, tolerance: float = 0.0) -> float:
        """What a measured probe must stay within: the budget less a noise ``tolerance`` (a fraction)."""
        return self.value * (1 - tolerance)


def format_value(key: str, value: float) -> str:
    """A resource value the way a user reads it, in the units the tables use: 100K params, 20M
    FLOPs, 512 MiB (memory is always MiB, like every memory column), 20 ms."""
    if key == "latency":
        return f"{value * 1e3:.4g} ms" if value < 1 else f"{value:.4g} s"
    if key == "memory":
        m = measure.mib(value)
        return f"{m:,.0f} MiB" if m >= 1000 or float(m).is_integer() else f"{m:.4g} MiB"
    return units.human(value, 4)


def parse_budget(text: str) -> Budget:
    """``KEY=VALUE`` as typed on the command line; anything malformed is a :class:`UsageError`."""
    if not isinstance(text, str) or text.count("=") != 1:
        raise UsageError(f"malformed budget {text!r}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
    key, _, raw = text.partition("=")
    key = key.strip().lower()
    if key not in KEYS:
        raise UsageError(f"unknown budget key {key!r} in {text!r}; choose from {', '.join(KEYS)}")
    m = _NUMBER.match(raw)
    suffix = m.group(2).lower() if m else ""
    if key == "memory" and suffix.endswith("b"):
        suffix = suffix[:-1]
    table = {"params": _COUNT, "flops": _COUNT, "memory": _BYTES, "latency": _TIME}[key]
    if m is None or suffix not in table:
        raise UsageError(f"malformed budget value {raw!r} for {key}: expected {_HELP[key]}")
    return Budget(key, validate.number(float(m.group(1)) * table[suffix], f"budget {text!r}"))


@dataclass
class FitResult:
    """One template's answer: the width, the model it builds and what that model costs."""

    template: str
    width: float
    arch: Arch
    resources: dict[str, Any]
    capped: bool = False
    note: Optional[str] = None
    probes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"template": self.template, "width": self.width, "filters": list(self.arch.filters)}
        d.update(self.resources)
        d["capped"] = self.capped
        if self.note:
            d["note"] = self.note
        return d


class _TooBig(Exception):
    """A probe's model is too large to build and time for real."""


@dataclass(frozen=True)
class FitRequest:
    """What :func:`fit` fits: ``family`` to ``budget`` for ``templates`` (default: all registered).

    How each model is built besides its width: ``classes`` and ``options`` (divisor, floor,
    as-published, and the image size every resource is counted at). Where and how the measured
    resources are measured: ``batch_size`` and ``device`` (training memory), ``threads`` (CPU
    threads for latency; default the process's) and ``latency_tolerance`` (a latency budget is
    fitted this fraction below, against timing noise). ``max_width`` caps the search; ``measure=True`` adds training memory and latency
    of every fitted model to its resources (otherwise only params, FLOPs and the budgeted resource).
    A latency budget is measured as ``latency`` says (a :class:`~filter_templates.method.runtimes.LatencySetting`:
    runtime, images per call, threads, rounds; default eager torch at batch 1) and searched by
    ``latency_fit``, or read from ``latency_table`` (measured on the target by ``probe``'s script).
    """

    family: str
    budget: Union[Budget, str]
    templates: Optional[Sequence[str]] = None
    classes: int = 10
    options: ArchOptions = ArchOptions()
    batch_size: int = 64
    device: str = "cpu"
    threads: Optional[int] = None
    latency_tolerance: float = LATENCY_TOLERANCE
    max_width: float = MAX_WIDTH
    measure: bool = False
    progress: Optional[bool] = None
    latency: Optional[LatencySetting] = None
    latency_table: Optional[LatencyTable] = None

    def latency_setting(self) -> LatencySetting:
        """How a latency budget is measured: ``latency``, else eager torch at batch 1 on ``device``
        with ``threads``."""
        if self.latency is not None:
            return self.latency
        return LatencySetting("torch", 1, self.threads, self.device)

    def arch(self, family: str, template: str, width: float) -> Arch:
        return self.options.arch(family, template, width, self.classes)


@dataclass
class _Objective:
    """The budgeted resource as a function of the width multiplier, for one template."""

    request: FitRequest
    family: str  # the request's, resolved
    template: str
    key: str
    device: Any
    limit: float
    cache: dict  # model signature -> measured value, shared by the templates of one fit
    max_real_params: int = 0
    seen: list = field(default_factory=list)  # (width, structure) of every probe
    probes: int = 0

    def arch(self, w: float) -> Arch:
        return self.request.arch(self.family, self.template, w)

    def signature(self, w: float) -> bytes:
        return arch_shape(self.arch(w)).signature

    def __call__(self, w: float) -> float:
        self.probes += 1
        arch = self.arch(w)
        shape = arch_shape(arch)
        self.seen.append((w, shape.structure))
        if self.key == "params":
            return float(shape.params)
        if self.key == "flops":
            return float(shape.flops)
        if shape.signature in self.cache:
            return self.cache[shape.signature]
        value = self._measure(arch, shape.params)
        self.cache[shape.signature] = value
        return value

    def _measure(self, arch: Arch, params: int) -> float:
        if self.key == "memory":
            if self.device.type == "cuda":
                if params > self.max_real_params:
                    raise _TooBig
                try:
                    return float(
                        measure.train_memory_bytes(
                            measure.meta_model(arch),
                            self.request.batch_size,
                            measure.input_shape_of(arch),
                            device=self.device,
                        )
                    )
                except torch.cuda.OutOfMemoryError:
                    return math.inf  # does not fit the device: certainly over any budget it could meet
            return float(
                measure.train_memory_bytes(
                    measure.meta_model(arch), self.request.batch_size, measure.input_shape_of(arch), device="cpu"
                )
            )
        raise AssertionError(f"{self.key} is counted or fitted elsewhere")  # latency: latency_fit


def fit(request: FitRequest) -> list[FitResult]:
    """For each template of ``request``, the largest width that fits its budget. Raises
    :class:`UsageError` for a budget below the smallest reachable model, naming that model's value."""
    r = request
    fam = get_family(r.family, r.options.image_size)
    budget = parse_budget(r.budget) if isinstance(r.budget, str) else r.budget
    if budget.key not in KEYS:
        raise UsageError(f"unknown budget key {budget.key!r}; choose from {', '.join(KEYS)}")
    validate.integer(r.batch_size, "batch size")
    validate.number(r.max_width, "maximum width", W_TINY)
    if r.threads is not None:
        validate.integer(r.threads, "thread count")
    validate.number(r.latency_tolerance, "latency tolerance", 0.0, strict=False, maximum=1.0)
    dev = resolve_device(r.device)
    names = list(r.templates) if r.templates else template_names()
    measured = budget.key == "memory" and dev.type == "cuda"
    limit = budget.value
    cache: dict = {}
    for name in names:  # refuse a bad template before spending time on the others
        r.arch(fam.name, name, 1.0)
    if budget.key == "latency":
        return _fit_latency(r, fam, budget, names)

    results = []
    for name in Progress(names, desc=f"fit {fam.name} {budget.key}", enabled=r.progress):
        obj = _Objective(r, fam.name, name, budget.key, dev, limit, cache, MAX_REAL_PARAMS)
        smallest = obj(W_TINY)
        if smallest > limit:
            raise UsageError(_unreachable(fam.name, r.options.floor, budget, smallest, limit))
        cap = _width_cap(obj.arch(1.0), fam, float(r.max_width), r.options.divisor)
        width, capped, note = _search(obj, limit, cap, EXACT_REL_TOL, measured)
        arch = obj.arch(width)
        want_memory = r.measure or budget.key == "memory"
        res = measure.resources(arch, r.batch_size, dev, memory=want_memory, latency=False)
        if not want_memory:
            res = {"params": res["params"], "flops": res["flops"]}
        results.append(FitResult(arch.template, width, arch, res, capped, note, obj.probes))
    if r.measure:  # every fitted model timed together, alternately
        records = time_archs(open_runtime(r.latency_setting()), [x.arch for x in results])
        for x, rec in zip(results, records):
            x.resources["latency"] = rec
    return results


def _fit_latency(r: FitRequest, fam: Any, budget: Budget, names: list[str]) -> list[FitResult]:
    """Every template fitted to a latency budget in the request's runtime (``latency_fit``)."""
    if r.latency_table is not None:
        return _fit_table(r, fam, budget, names, r.latency_table)
    runtime = open_runtime(r.latency_setting())
    limit = budget.limit(r.latency_tolerance)
    fitter = LatencyFitter(runtime, lambda t, w: r.arch(fam.name, t, w), budget.value, limit, W_TINY)
    results = []
    for name in Progress(names, desc=f"fit {fam.name} latency in {runtime.name}", enabled=r.progress):
        cap = _width_cap(r.arch(fam.name, name, 1.0), fam, float(r.max_width), r.options.divisor)
        try:
            answer = fitter.fit(name, cap)
        except Unreachable as exc:
            raise UsageError(
                f"budget {budget} cannot be met in {runtime.name}: the fastest {fam.name} {name} model measured "
                f"(width {exc.width:.3g}) takes {format_value('latency', exc.fastest)}"
                + (
                    f", above the budget less the noise tolerance ({format_value('latency', limit)})"
                    if limit != budget.value
                    else ""
                )
            ) from None
        res = measure.resources(answer.arch, r.batch_size, r.device, memory=r.measure, latency=False)
        if not r.measure:
            res = {"params": res["params"], "flops": res["flops"]}
        res["latency"] = answer.record
        if answer.next_step is not None:
            res["next_step"] = answer.next_step
        note = _capped_note(cap) if answer.capped else None
        results.append(
            FitResult(answer.arch.template, answer.width, answer.arch, res, answer.capped, note, answer.probes)
        )
    return results


def _fit_table(r: FitRequest, fam: Any, budget: Budget, names: list[str], table: LatencyTable) -> list[FitResult]:
    """Every template fitted against a latency table (``latency_table``), interpolated over widths."""
    table.check(lambda t, w: r.arch(fam.name, t, w), names)
    limit = budget.limit(r.latency_tolerance)
    results = []
    for name in names:
        cap = _width_cap(r.arch(fam.name, name, 1.0), fam, float(r.max_width), r.options.divisor)
        width, median, spread, capped = table.fit(name, limit, cap)
        if median > limit:
            raise UsageError(
                f"budget {budget} cannot be met: the smallest {name} model in --latency-table {table.path} "
                f"(width {width:g}) takes {format_value('latency', median)}; probe smaller widths"
            )
        arch = r.arch(fam.name, name, width)
        res = measure.resources(arch, r.batch_size, r.device, memory=r.measure, latency=False)
        if not r.measure:
            res = {"params": res["params"], "flops": res["flops"]}
        res["latency"] = table.record(median, spread, budget.value)
        note = (
            f"the table's widest {name} model (width {width:g}) is within the budget; probe wider" if capped else None
        )
        if spread > budget.value - median:  # the target's timing was too noisy to place this width
            note = (
                f"the table's spread at width {width:g} ({format_value('latency', spread)}) is wider than its margin "
                f"to the budget ({format_value('latency', budget.value - median)}): time the probe again with more rounds"
            )
        results.append(FitResult(arch.template, width, arch, res, capped, note, 0))
    return results


def _width_cap(unit: Arch, fam: Any, max_width: float, divisor: int) -> float:
    """``max_width``, lowered so that no layer passes the families' filter limit (a quadratic
    GoogLeNet reaches it near width 58): huge budgets then end "capped" instead of failing."""
    biggest = max(*unit.filters, *unit.widths, *fam.base_filters) + 1  # +1: rounding up never passes the limit
    return min(max_width, (MAX_FILTERS - divisor) / biggest)


def _unreachable(family: str, floor: int, budget: Budget, smallest: float, limit: float) -> str:
    what = f"the smallest reachable {family} model (every layer at the floor {floor}, width -> 0)"
    if budget.key == "latency":
        margin = (
            f", above the budget less the noise tolerance ({format_value('latency', limit)})"
            if limit != budget.value
            else ""
        )
        return f"budget {budget} cannot be met: {what} takes {format_value('latency', smallest)}{margin}"
    unit = {"params": " parameters", "flops": " FLOPs per image", "memory": " of training memory"}[budget.key]
    return f"budget {budget} is below {what}: {format_value(budget.key, smallest)}{unit}"


def _search(
    obj: Callable[[float], float], limit: float, max_width: float, rel_tol: float, measured: bool
) -> tuple[float, bool, Optional[str]]:
    """Largest ``w`` in ``(0, max_width]`` with ``obj(w) <= limit``; ``obj(W_TINY) <= limit`` holds."""

    def fits(w: float) -> bool:
        return obj(w) <= limit

    # --- bracket: lo fits, hi does not ---------------------------------------------------------
    if measured:
        guess, factor = min(0.5, max_width), 2.0
    else:  # costs grow roughly with w^2: a good first guess saves most of the bracketing
        small, at_one = obj(W_TINY), obj(1.0)
        guess = math.sqrt(max(limit - small, 0.0) / max(at_one - small, 1e-300)) if at_one > small else 1.0
        guess, factor = min(max(guess, 10 * W_TINY), max_width), 1.1
    lo, hi = W_TINY, None
    try:
        if fits(guess):
            lo = guess
            while hi is None:
                if lo >= max_width:
                    return max_width, True, _capped_note(max_width)
                w = min(lo * factor, max_width)
                if fits(w):
                    lo = w
                else:
                    hi = w
                factor = 1 + 2 * (factor - 1)
        else:
            hi = guess
            while True:
                w = hi / factor
                if w <= W_TINY:
                    break  # lo stays at W_TINY, which fits
                if fits(w):
                    lo = w
                    break
                hi = w
                factor = 1 + 2 * (factor - 1)
    except _TooBig:
        return (
            lo,
            True,
            (
                f"latency/memory probes stop at models over {MAX_REAL_PARAMS:,} parameters; "
                f"width {lo:.6g} is the largest probed that fits"
            ),
        )

    # --- bisection, plus a scan above the boundary where the structure changes -------------------
    assert hi is not None
    while True:
        for _ in range(200):  # ends long before: the bracket halves every time
            if hi - lo <= rel_tol * lo:
                break
            mid = 0.5 * (lo + hi)
            if fits(mid):
                lo = mid
            else:
                hi = mid
        if measured or not _structure_changes(obj, lo, hi):
            break
        again = _scan_up(fits, hi, max_width)
        if again is None:
            break
        lo, hi = again, None
        while hi is None:  # the next width above it that does not fit
            w = lo * (1 + SCAN_STEP)
            if w >= max_width:
                if fits(max_width):
                    return max_width, True, _capped_note(max_width)
                hi = max_width
            elif fits(w):
                lo = w
            else:
                hi = w
    return _short_width(obj, lo, hi), False, None


def _structure_changes(obj: Any, lo: float, hi: float) -> bool:
    """Whether probes near the boundary built models of more than one structure."""
    near = {s for w, s in getattr(obj, "seen", ()) if lo / 1.25 <= w <= hi * 1.25}
    return len(near) > 1


def _scan_up(fits: Callable[[float], bool], start: float, max_width: float) -> Optional[float]:
    """The first width that fits in ``SCAN_STEPS`` steps of ``SCAN_STEP`` above ``start``."""
    w = start
    for _ in range(SCAN_STEPS):
        w = min(w * (1 + SCAN_STEP), max_width)
        if fits(w):
            return w
        if w >= max_width:
            break
    return None


def _capped_note(max_width: float) -> str:
    return (
        f"even width {max_width:g} (the largest allowed, see --max-width) stays within the budget; "
        f"reporting width {max_width:g}"
    )


def _short_width(obj: Any, lo: float, hi: float) -> float:
    """The shortest decimal in ``[lo, hi)`` that builds the same model as ``lo`` (else ``lo``)."""
    signature = getattr(obj, "signature", None)
    if signature is None:
        return lo
    target = signature(lo)
    exponent = math.floor(math.log10(lo))
    for digits in range(2, 10):
        scale = 10.0 ** (digits - 1 - exponent)
        c = math.ceil(lo * scale - 1e-9) / scale
        c = float(f"{c:.{digits}g}")
        if lo <= c < hi and signature(c) == target:
            return c
    return lo
