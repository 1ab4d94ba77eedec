"""Latency measured on the target device: ``probe`` writes a model's templates at a grid of widths as
ONNX files, a manifest and one standalone script; the script, run on the target, writes a latency
table; ``fit --latency-table`` fits budgets against that table.

The probe folder holds ``models/*.onnx`` (one file per distinct model, exported as ``export``
writes it), ``manifest.json`` (what was probed: the model, its build settings and one entry per
template and width with its filter counts) and ``time_models.py`` (a copy of
``deploy_timing.py``: it needs only the runtime and numpy). The table is the manifest plus, per
entry, the median and spread the target measured, and the runtime, version, threads, batch and
machine.

Fitting against a table: a template's entries, ordered by width, are interpolated linearly in log
latency over log width, and the answer is the widest step of the fit's width grid whose interpolated
latency is within the limit. Latency is not made monotone in width, because it is not: runtimes pick
kernels by channel count, and onnxruntime ran VGG-19 base at width 0.243 (16, 31, 62 ... channels)
in 0.82 ms but at 0.231 (15, 30, 59 ...) in 0.97 ms. A table is only read for the model it was
probed for: every entry's filter counts must be what this request builds at that width, so a
table of another model, template set, class count, divisor or image size is refused in one line.

Refining: runtimes pick kernels by channel count, so latency climbs in stairs, and between two
probed widths 20% apart interpolation can miss a stair by a few 5% steps. ``probe --refine TABLE
--budget latency=...`` therefore writes a second probe of every step of the fit's grid between the
two probed widths around each budget (:func:`refined_widths`); its table, timed on the target,
answers those budgets to one step.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.method import deploy_timing
from filter_templates.method.arch import Arch
from filter_templates.method.deploy_timing import MANIFEST, TABLE, TABLE_FORMAT
from filter_templates.method.latency_fit import step_of, width_of
from filter_templates.method.measure import arch_shape
from filter_templates.method.onnx_model import onnx_bytes

__all__ = ["SCRIPT", "MODELS_DIR", "DEFAULT_WIDTHS", "write_probe", "LatencyTable", "read_table", "refined_widths"]

SCRIPT = "time_models.py"
MODELS_DIR = "models"
#: Every fourth step of the fit's width grid from 0.05 to 1 (about 20% apart): 17 widths.
DEFAULT_WIDTHS = tuple(width_of(k) for k in range(step_of(1.0), step_of(0.05), -4))[::-1]
#: Steps ``--refine`` adds on either side of the bracket: the second probe is timed apart from the
#: first, and a width measured just within the limit once can measure just over it the next time.
REFINE_MARGIN = 2
_BUILD_KEYS = ("family", "classes", "divisor", "floor", "as_published", "image_size")


def _build(arch: Arch) -> dict[str, Any]:
    """What besides the template and width decides the model (a user's model: its plan too)."""
    out = {k: getattr(arch, k) for k in _BUILD_KEYS}
    if arch.plan:
        out["plan"] = arch.plan
    return out


def write_probe(out: Path, archs: Sequence[Arch], progress: Callable[[Sequence[Arch]], Any] = iter) -> dict[str, Any]:
    """Write the probe folder ``out`` for ``archs`` (one model's templates at several widths):
    ONNX files, manifest and script. Returns the manifest."""
    build = _build(archs[0])
    models = out / MODELS_DIR
    models.mkdir(parents=True, exist_ok=True)
    files: dict[bytes, str] = {}
    entries = []
    for arch in progress(archs):
        shape = arch_shape(arch)
        if shape.signature not in files:  # a model two entries share is written once
            name = f"{MODELS_DIR}/{rundir.portable(arch.template) or 'custom'}-w{arch.width:g}.onnx"
            rundir.atomic_write(out / name, _writer(onnx_bytes(arch.build(), arch.image_size)))
            files[shape.signature] = name
        entries.append(
            {
                "template": arch.template,
                "width": arch.width,
                "filters": list(arch.filters),
                "params": shape.params,
                "flops": shape.flops,
                "file": files[shape.signature],
            }
        )
    manifest = {"model": build["family"], "build": build, "image_size": build["image_size"], "entries": entries}
    rundir.atomic_write_json(out / MANIFEST, manifest)
    rundir.atomic_copy(deploy_timing.__file__, out / SCRIPT)
    shutil.copymode(deploy_timing.__file__, out / SCRIPT)
    return manifest


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda f: f.write(data)


@dataclass
class LatencyTable:
    """A latency table as read back: where it was measured and each template's (width, median,
    spread) points, ordered by width."""

    path: Path
    doc: dict[str, Any]
    points: dict[str, list[tuple[float, float, float]]]
    flag: str = "--latency-table"  # the option that named it, for messages

    def check(self, arch_at: Callable[[str, float], Arch], templates: Sequence[str]) -> None:
        """Refuse (one line) a table not probed for the model ``arch_at`` builds, or lacking a template."""
        mine = _build(arch_at(templates[0], 1.0))
        if mine != self.doc.get("build"):
            raise UsageError(
                f"{self.flag} {self.path}: a table of {_describe(self.doc.get('build'))}, not of "
                f"{_describe(mine)}; run probe for this model"
            )
        missing = [t for t in templates if t not in self.points]
        if missing:
            raise UsageError(
                f"{self.flag} {self.path}: no entries for template {', '.join(missing)} "
                f"(it holds {', '.join(self.points)}); probe them"
            )
        for e in self.doc["entries"]:
            if e["template"] not in templates:
                continue
            arch = arch_at(e["template"], float(e["width"]))
            if list(arch.filters) != list(e["filters"]):
                raise UsageError(
                    f"{self.flag} {self.path}: a table of another template set ({e['template']} at width "
                    f"{e['width']:g} was {_short(e['filters'])}, here {_short(arch.filters)}); run probe for this model"
                )

    def smallest(self, templates: Sequence[str]) -> float:
        return min(self.points[t][0][1] for t in templates)

    def fit(self, template: str, limit: float, max_width: float) -> tuple[float, float, float, bool]:
        """(width on the fit's grid, interpolated median, spread, capped) of the widest step within
        ``limit``; ``capped`` when the table's widest entry (or ``max_width``) is within it."""
        pts = self.points[template]
        widths = [p[0] for p in pts]
        medians = [p[1] for p in pts]
        spreads = [p[2] for p in pts]
        top = min(widths[-1], max_width)
        k = step_of(top)
        while width_of(k) > widths[0]:
            w = width_of(k)
            median, spread = _interpolate(w, widths, medians, spreads)
            if median <= limit:
                return w, median, spread, k == step_of(top)
            k -= 1
        return widths[0], medians[0], spreads[0], False

    def record(self, median: float, spread: float, budget: float) -> dict[str, Any]:
        d = self.doc
        return {
            "runtime": d["runtime"],
            "version": d["version"],
            "threads": d["threads"],
            "batch": d["batch"],
            "device": "target",
            "device_name": d.get("machine"),
            "median_s": median,
            "spread_s": spread,
            "rounds": d.get("rounds"),
            "cores": d.get("cores"),
            "load": d.get("load"),
            "source": str(self.path),
            "interpolated": True,
            "margin": (budget - median) / budget,
        }


def refined_widths(table: LatencyTable, template: str, limits: Sequence[float]) -> list[float]:
    """Every step of the fit's width grid from the widest probed width within each limit to the next
    probed width, and ``REFINE_MARGIN`` steps beyond on either side: what a second probe times so
    that its table places those budgets to one step. A limit below the smallest probed model or
    above the widest is one line."""
    pts = [(w, m) for w, m, _ in table.points[template]]
    steps: set[int] = set()
    for limit in limits:
        inside = [i for i, (_, m) in enumerate(pts) if m <= limit]
        if not inside:
            raise UsageError(
                f"{table.flag} {table.path}: the smallest {template} model probed (width {pts[0][0]:g}) takes "
                f"{pts[0][1] * 1e3:.4g} ms, over {limit * 1e3:.4g} ms; probe smaller widths"
            )
        i = inside[-1]
        if i == len(pts) - 1:
            raise UsageError(
                f"{table.flag} {table.path}: the widest {template} model probed (width {pts[i][0]:g}) takes "
                f"{pts[i][1] * 1e3:.4g} ms, within {limit * 1e3:.4g} ms; probe wider widths"
            )
        lo, hi = pts[i][0], pts[i + 1][0]
        top = step_of(hi)
        top += width_of(top) < hi * (1 - 1e-9)  # the grid step at or above the next probed width
        steps.update(range(step_of(lo) - REFINE_MARGIN, top + REFINE_MARGIN + 1))
    return [width_of(k) for k in sorted(steps)]


def _interpolate(w: float, widths: list[float], medians: list[float], spreads: list[float]) -> tuple[float, float]:
    """Median (linear in log latency over log width) and spread (the larger neighbour's) at ``w``."""
    for i in range(1, len(widths)):
        if w <= widths[i]:
            a, b = widths[i - 1], widths[i]
            t = (math.log(w) - math.log(a)) / (math.log(b) - math.log(a)) if b > a else 1.0
            median = math.exp(math.log(medians[i - 1]) + t * (math.log(medians[i]) - math.log(medians[i - 1])))
            return median, max(spreads[i - 1], spreads[i])
    return medians[-1], spreads[-1]


def _describe(build: Any) -> str:
    if not isinstance(build, dict):
        return "an unknown model"
    return (
        f"{build.get('family')}, {build.get('classes')} classes, divisor {build.get('divisor')}, "
        f"{build.get('image_size')} px"
    )


def _short(filters: Sequence[int]) -> str:
    f = [str(n) for n in filters]
    return " ".join(f if len(f) <= 6 else f[:3] + ["..."] + f[-2:])


def read_table(path: str | Path, flag: str = "--latency-table") -> LatencyTable:
    """A latency table written by the probe's script; anything else is one line."""
    p = Path(path)
    doc = rundir.read_json(p) if p.is_file() else None
    if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
        what = "no such file" if not p.is_file() else f"not a latency table ({TABLE} written by the probe's {SCRIPT})"
        raise UsageError(f"{flag} {p}: {what}")
    points: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for e in doc["entries"]:
            points.setdefault(str(e["template"]), []).append(
                (float(e["width"]), float(e["median_s"]), float(e["spread_s"]))
            )
        for key in ("runtime", "version", "threads", "batch", "build"):
            doc[key]  # noqa: B018 - present, or the table is refused
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{flag} {p}: malformed latency table ({type(exc).__name__}: {exc})") from None
    for t in points:
        points[t].sort()
        if any(m <= 0 or not math.isfinite(m) for _, m, _ in points[t]):
            raise UsageError(f"{flag} {p}: template {t} has a latency that is not a positive number")
    return LatencyTable(p, doc, points, flag)
