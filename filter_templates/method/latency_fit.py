"""Fit a latency budget in a runtime: per template, the widest model whose latency, measured in that
runtime, stays within the budget.

Widths are searched on a grid of steps, ``w = WIDTH_STEP**k`` for integer ``k`` (5% apart: about
10% of latency where it grows with the square of the width). The search takes latency as monotone
in the width, which it is only roughly: runtimes pick kernels by channel count, so a narrower model
can be slower. Once it has a step that fits below one that misses, it times ``LOOK_PAST`` more steps
beyond the miss and moves up to any that fits. The answer is a step that fits with the next step up
(and the ``LOOK_PAST`` after it) not fitting. A probe in onnxruntime or OpenVINO costs an ONNX
export (seconds), so the search predicts instead of bisecting: latency is close to affine in FLOPs, which cost nothing to count,
so the next probe is the width whose FLOPs the line through the two nearest measured probes
puts at the budget (falling back to bisection when two probes in a row land on the same side),
and a template starts from the FLOPs of the template fitted before it. A VGG-19 template takes
three to five probes. Identical models (the same parameter shapes, e.g. under ``--divisor``) are
timed once.

A probe fits when its median is at most ``limit`` (the budget less the noise tolerance). At the
end the chosen model and the next step up are timed again, together and alternately
(``runtimes.time_models``), and the answer must hold within one width step whatever the noise
(:func:`within_one_step`): the chosen model must still meet the budget, and the timings' noise
(half their spread, the inter-quartile range over rounds) must be too small to let the step below
miss the limit or the step above the next one meet it. Two neighbouring steps may well be closer
than the spread (at small widths a step adds a few per cent of latency); that is the one-step
uncertainty every fit has, not a reason to refuse. When the noise is wider, the fit refuses in one
line naming the spread and the machine's load, rather than answer from noise. Otherwise the answer
carries both records and the chosen model's margin to the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from filter_templates.core.errors import UsageError
from filter_templates.method.arch import Arch
from filter_templates.method.measure import arch_shape
from filter_templates.method.runtimes import Runtime, Timing, load_text, open_arch, time_models

__all__ = [
    "WIDTH_STEP",
    "width_of",
    "step_of",
    "within_one_step",
    "LatencyAnswer",
    "LatencyFitter",
    "Unreachable",
    "NoisyTiming",
]

WIDTH_STEP = 1.05
#: Steps the search times past the first step that misses the limit, in case a wider one fits again.
LOOK_PAST = 2


def width_of(k: int) -> float:
    """The width of grid step ``k``, as a short decimal."""
    return float(f"{WIDTH_STEP**k:.6g}")


def step_of(width: float) -> int:
    """The grid step at or below ``width`` (a width rounded by :func:`width_of` is its own step: the
    six digits move it by up to 1e-5 of a step)."""
    return math.floor(math.log(width) / math.log(WIDTH_STEP) + 1e-4)


def within_one_step(chosen: Timing, above: Timing, limit: float) -> bool:
    """Whether "``chosen`` fits the limit, the step ``above`` it does not" holds within one width
    step despite the noise: with ``noise`` half the wider spread and ``step`` the latency one width
    step adds, the step below ``chosen`` (about ``chosen - step``) fits even when ``noise`` slower,
    and the step above ``above`` (about ``above + step``) misses even when ``noise`` faster."""
    step = above.median_s - chosen.median_s
    noise = max(chosen.spread_s, above.spread_s) / 2
    return chosen.median_s - step + noise <= limit < above.median_s + step - noise


class NoisyTiming(UsageError):
    """This machine's timing noise is wider than what the fit must decide: a fact about the run,
    not the budget, so a sweep stops with this line instead of recording the budget unreachable."""


class Unreachable(Exception):
    """No probed model meets the limit: ``fastest`` seconds (at ``width``) is the best measured."""

    def __init__(self, fastest: float, width: float) -> None:
        super().__init__(fastest, width)
        self.fastest, self.width = fastest, width


@dataclass
class LatencyAnswer:
    """One template's fit: its width and model, the chosen model's latency record (with its
    ``margin`` to the budget) and the next step up's (None when the width is capped)."""

    width: float
    arch: Arch
    record: dict[str, Any]
    next_step: Optional[dict[str, Any]]
    capped: bool
    probes: int


@dataclass
class LatencyFitter:
    """Fits templates of one request in one runtime, sharing measured models across templates.

    ``arch_at(template, width)`` builds a template's model; ``budget`` and ``limit`` are seconds
    (a probe fits at ``median <= limit``); ``tiny``: the smallest width (every layer at the floor)."""

    runtime: Runtime
    arch_at: Callable[[str, float], Arch]
    budget: float
    limit: float
    tiny: float
    timings: dict[bytes, Timing] = field(default_factory=dict)
    _calls: dict[bytes, Callable[[], object]] = field(default_factory=dict)
    _flops_hint: Optional[int] = None
    probes: int = 0

    # --- timing one model -------------------------------------------------------------------------
    def _call(self, arch: Arch) -> Callable[[], object]:
        sig = arch_shape(arch).signature
        if sig not in self._calls:
            self._calls[sig] = open_arch(self.runtime, arch)
        return self._calls[sig]

    def timing(self, arch: Arch) -> Timing:
        """``arch``'s model timed alone (cached by model: the same model reached twice is timed once)."""
        sig = arch_shape(arch).signature
        if sig not in self.timings:
            self.probes += 1
            (self.timings[sig],) = time_models(self.runtime, [self._call(arch)])
        return self.timings[sig]

    def smallest(self, template: str) -> Timing:
        """The latency of the template's smallest model (every layer at the floor)."""
        return self.timing(self.arch_at(template, self.tiny))

    # --- the search -----------------------------------------------------------------------------
    def fit(self, template: str, max_width: float) -> LatencyAnswer:
        """The widest grid step of ``template`` up to ``max_width`` within the limit, re-measured
        against the next step up (see the module docstring)."""
        start = self.probes
        k_min, k_max = step_of(self.tiny) + 1, step_of(max_width)
        lo, hi = self._search(template, k_min, k_max)
        self._calls = {sig: c for sig, c in self._calls.items() if sig in self._keep(template, lo, hi)}
        chosen = self.arch_at(template, width_of(lo))
        nxt = self.arch_at(template, width_of(hi)) if hi is not None else None
        calls = [self._call(chosen)] + ([self._call(nxt)] if nxt is not None else [])
        timed = time_models(self.runtime, calls)
        record = self._record(timed[0])
        if timed[0].median_s > self.budget:
            raise NoisyTiming(
                f"{template}: width {width_of(lo):g} met the budget during the search but measures "
                f"{timed[0].median_s * 1e3:.4g} ms when timed again (timing spread {timed[0].spread_s * 1e3:.3g} ms), "
                f"over {self.budget * 1e3:.4g} ms{load_text(record)}: timing is not stable here, not answering from noise"
            )
        next_step = None
        if nxt is not None and hi is not None:
            if not within_one_step(timed[0], timed[1], self.limit):
                raise NoisyTiming(
                    f"{template}: cannot place the width within one step from noise: width {width_of(lo):g} takes "
                    f"{timed[0].median_s * 1e3:.4g} ms and the next step {width_of(hi):g} {timed[1].median_s * 1e3:.4g} ms "
                    f"against a limit of {self.limit * 1e3:.4g} ms, but the timing spread is "
                    f"{max(timed[0].spread_s, timed[1].spread_s) * 1e3:.3g} ms{load_text(record)}; rerun on a "
                    "quieter machine or with more --latency-rounds"
                )
            next_step = {"width": width_of(hi), "filters": list(nxt.filters), **self._record(timed[1])}
        self._flops_hint = arch_shape(chosen).flops
        return LatencyAnswer(width_of(lo), chosen, record, next_step, hi is None, self.probes - start)

    def _keep(self, template: str, lo: int, hi: Optional[int]) -> set[bytes]:
        steps = [lo] + ([hi] if hi is not None else [])
        return {arch_shape(self.arch_at(template, width_of(k))).signature for k in steps}

    def _record(self, timing: Timing) -> dict[str, Any]:
        rec = self.runtime.record(timing)
        rec["margin"] = (self.budget - timing.median_s) / self.budget
        return rec

    def _search(self, template: str, k_min: int, k_max: int) -> tuple[int, Optional[int]]:
        """(largest step that fits, the step above it or None at ``k_max``).

        Latency need not grow with the width at the smallest widths (OpenVINO runs a model of
        one-filter layers slower than one of a few filters), so while no probe fits, the search
        walks down in growing strides instead of trusting the smallest model."""
        measured: dict[int, float] = {k_min - 1: self.smallest(template).median_s}
        lo: Optional[int] = k_min - 1 if measured[k_min - 1] <= self.limit else None
        hi: Optional[int] = None
        sides: list[bool] = []
        k, stride = self._first_guess(template, k_min, k_max), 8
        while True:
            latency = self.timing(self.arch_at(template, width_of(k))).median_s
            measured[k] = latency
            fits = latency <= self.limit
            sides.append(fits)
            if fits:
                lo = k if lo is None else max(lo, k)
            else:
                hi = k if hi is None else min(hi, k)
            if lo is None:
                assert hi is not None
                if hi <= k_min:
                    raise Unreachable(min(measured.values()), width_of(min(measured, key=measured.__getitem__)))
                k, stride = max(hi - stride, k_min), stride * 2
                continue
            if lo >= k_max:
                return k_max, None
            if hi is not None and hi - lo <= 1:
                return self._look_past(template, lo, hi, k_max)
            if hi is not None and len(sides) >= 2 and sides[-1] == sides[-2]:
                k = (lo + hi) // 2  # the line keeps landing on one side: halve the bracket
            else:
                k = self._predict(template, measured, lo, hi, k_max)

    def _look_past(self, template: str, lo: int, hi: int, k_max: int) -> tuple[int, Optional[int]]:
        """(largest step that fits, the step above it), looking ``LOOK_PAST`` steps past each miss:
        runtimes pick kernels by channel count, so a wider model can be faster (onnxruntime ran VGG-19
        uniform at 38 channels a layer in 0.99 ms and at 40 in 0.82 ms), and the first miss above a
        fit need not be the last."""
        best, k, misses = lo, hi, 1
        while misses <= LOOK_PAST and k < k_max:
            k += 1
            if self.timing(self.arch_at(template, width_of(k))).median_s <= self.limit:
                best, misses = k, 0
            else:
                misses += 1
        return (k_max, None) if best >= k_max else (best, best + 1)

    def _first_guess(self, template: str, k_min: int, k_max: int) -> int:
        if self._flops_hint is not None:  # the FLOPs of the template fitted before
            return min(max(self._k_for_flops(template, self._flops_hint, k_min, k_max), k_min), k_max)
        return min(max(step_of(0.5), k_min), k_max)

    def _predict(self, template: str, measured: dict[int, float], lo: int, hi: Optional[int], k_max: int) -> int:
        """The step the line through two measured probes (latency against FLOPs) puts at the limit,
        strictly inside the bracket."""
        a, b = (lo, hi) if hi is not None else sorted(measured)[-2:]
        fa, fb = (self._flops(template, k) for k in (a, b))
        la, lb = measured[a], measured[b]
        if lb > la and fb > fa:
            target = fa + (self.limit - la) * (fb - fa) / (lb - la)
        else:  # flat (noise, or a plateau of the runtime): grow the FLOPs
            target = 2.0 * max(fa, fb)
        if hi is None:
            target = min(target, 8.0 * fb)  # never jump further than 8x the FLOPs of the last probe
        k = self._k_for_flops(template, target, lo, hi if hi is not None else k_max)
        upper = hi - 1 if hi is not None else k_max
        return min(max(k, lo + 1), upper)

    def _flops(self, template: str, k: int) -> int:
        return arch_shape(self.arch_at(template, width_of(k))).flops

    def _k_for_flops(self, template: str, flops: float, lo: int, hi: int) -> int:
        """The largest step in ``[lo, hi]`` whose FLOPs are at most ``flops`` (else ``lo``)."""
        if self._flops(template, hi) <= flops:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._flops(template, mid) <= flops:
                lo = mid
            else:
                hi = mid
        return lo
