"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

Per dataset: accuracy versus parameters, versus training memory and versus latency, one panel per
family (and per setting, when the runs differ in more than the seed: another recipe, other epochs;
each panel's title says which); one point per template where the panel has one width, one curve
across the widths where it has several, each with its 95% interval (:mod:`.intervals`), and dashed
lines through the base model at width 1 (or the widest base trained, as the legend says). Axes read
at a glance: K/M counts, log only over a decade or more, an accuracy axis of at least ten points.
Per family: the per-layer filter counts of every template.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from filter_templates.core import units
from filter_templates.core.rundir import atomic_write
from filter_templates.method.measure import MIB
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.report import settings
from filter_templates.report.tables import (
    Cell,
    Labels,
    family_order,
    interval_words,
    measured_on,
    template_order,
)

__all__ = [
    "AXES",
    "tradeoff_figure",
    "filters_figure",
    "save",
    "template_style",
    "panels",
    "accuracy_label",
    "runs_line",
    "axis_x",
    "axis_y",
    "legend_below",
    "draw_series",
    "template_handles",
]

# x-axis: (cell resource column, axis label, scale to display units, whether the values are counts
# that read with K/M prefixes)
AXES: dict[str, tuple[str, str, float, bool]] = {
    "params": ("params", "parameters", 1.0, True),
    "memory": ("train_memory_bytes", "training memory per batch (MiB)", 1 / MIB, False),
    "latency": ("latency_batch_s", "inference latency per batch (ms)", 1e3, False),
}

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "h", "<"]


def template_style(name: str, others: Sequence[str] = ()) -> dict[str, Any]:
    """The same colour and marker for a template in every figure."""
    if name in BUILTIN_TEMPLATES:
        i = BUILTIN_TEMPLATES.index(name)
    else:
        custom = sorted(set(others) - set(BUILTIN_TEMPLATES))
        i = len(BUILTIN_TEMPLATES) + (custom.index(name) if name in custom else 0)
    return {"color": _COLORS[i % len(_COLORS)], "marker": _MARKERS[i % len(_MARKERS)]}


def save(fig: Any, path_stem: Path) -> list[Path]:
    """PNG and SVG, cropped to their content so no label is clipped."""
    out = []
    for ext in ("png", "svg"):
        p = path_stem.with_suffix(f".{ext}")
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, editable
            atomic_write(
                p, lambda f: fig.savefig(f, format=ext, dpi=150 if ext == "png" else None, bbox_inches="tight")
            )
        out.append(p)
    plt.close(fig)
    return out


def panels(cells: Sequence[Any]) -> list[tuple[str, str, str]]:
    """``(family, setting key, title)`` of each panel: one per family and setting, so runs of
    different settings are never drawn as one curve; the title names the setting's differing fields."""
    labels = Labels.of(c.setting for c in cells)
    present = {(c.family, c.skey) for c in cells}
    return [
        (fam, k, fam + (f"\n{settings.row_label(labels.settings[k], labels.shown)}" if labels.shown else ""))
        for fam in family_order(c.family for c in cells)
        for k in labels.settings
        if (fam, k) in present
    ]


def accuracy_label(metric: str) -> str:
    """The y axis, in the tables' words: the best epoch's test accuracy is optimistic."""
    if metric == "best":
        return "best test accuracy over epochs (%, optimistic)"
    return f"{metric} test accuracy (%)" if metric == "final" else f"{metric}_acc (%)"


def runs_line(cells: Sequence[Any]) -> str:
    """The tables' caption line (recipe, epochs, test views), wrapped for a figure title."""
    text = Labels.of(c.setting for c in cells).caption().replace("(per row)", "(per panel)")
    return "\n".join(textwrap.wrap(text, 120))


def _grid(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else 2
    return math.ceil(n / cols), cols


def tradeoff_figure(cells: dict[tuple, Cell], dataset: str, axis: str, metric: str = "final") -> Any | None:
    """Accuracy versus one resource for ``dataset``, with 95% intervals as error bars: one point per
    template where a panel has one width, one curve per template across the widths where it has
    several; None when no done run recorded that resource."""
    column, xlabel, scale, counts = AXES[axis]
    mine = [
        c
        for c in cells.values()
        if c.dataset == dataset and c.done and c.resource(column) is not None and c.acc(metric) is not None
    ]
    if not mine:
        return None
    templates = template_order(c.method for c in mine)
    where = panels(mine)
    rows, cols = _grid(len(where))
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    batch = next((c.first("batch_size") for c in mine if c.first("batch_size")), 64)
    widths = sorted({c.width for c in mine})
    curves = any(len({c.width for c in mine if (c.family, c.method, c.skey) == k}) > 1 for k in _series(mine))
    refs: dict[str, float] = {}
    for ax, (fam, skey, panel_title) in zip(axes.flat, where):
        xs_all: list[float] = []
        ys_all: list[tuple[float, float]] = []
        panel = [c for c in mine if c.skey == skey and c.family == fam]
        for t in templates:
            pts = [c for c in sorted(panel, key=lambda c: c.width) if c.method == t and (c.resource(column) or 0) > 0]
            xs = [float(c.resource(column) or 0) * scale for c in pts]
            ys_all += draw_series(ax, pts, xs, metric, t, templates)
            xs_all += xs
        ref = _reference(panel, fam)
        if ref is not None:
            refs[fam] = ref.width
            x, y = ref.resource(column), ref.acc(metric)
            if x is not None and x > 0:
                ax.axvline(x * scale, color="0.35", linestyle="--", linewidth=1)
                xs_all.append(x * scale)
            if y is not None:
                ax.axhline(100 * y, color="0.35", linestyle="--", linewidth=1)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel.replace("per batch", f"per batch of {batch}"))
        ax.set_ylabel(accuracy_label(metric))
        ax.grid(True, which="both", alpha=0.25)
        axis_x(ax, xs_all, counts)
        axis_y(ax, ys_all)
    for ax in list(axes.flat)[len(where) :]:
        ax.set_visible(False)
    handles = template_handles(templates, curves)
    if refs:
        label = (
            f"base at width {next(iter(refs.values())):g}"
            if len(set(refs.values())) == 1
            else "base, widest trained: " + ", ".join(f"{fam} {w:g}" for fam, w in refs.items())
        )
        handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1, label=label))
    fig.suptitle(_title(mine, dataset, axis, widths, curves), fontsize=10)
    legend_below(fig, handles)
    return fig


def _title(mine: Sequence[Cell], dataset: str, axis: str, widths: Sequence[float], curves: bool) -> str:
    """What the figure shows, what its bars are, where its costs were measured and which runs it holds."""
    what = {"params": "parameters", "memory": "training memory", "latency": "inference latency"}[axis]
    some = (
        f"{widths[0]:g}"
        if len(widths) == 1
        else ", ".join(f"{w:g}" for w in widths)
        if len(widths) <= 4
        else f"{widths[0]:g} to {widths[-1]:g}"
    )
    how = f"one curve per template across widths {some}" if curves else f"one point per template, width {some}"
    title = f"{dataset}: accuracy versus {what}, {how}\nbars: {interval_words(len(c.done) for c in mine)}"
    if axis in ("latency", "memory"):  # the runs' own latency: eager PyTorch on the training device
        engine = "eager PyTorch " if axis == "latency" else ""
        title += f"\nmeasured {engine}on {measured_on([r for c in mine for r in c.done])}"
    return title + "\n" + runs_line(mine)


def draw_series(
    ax: Any, cells: Sequence[Any], xs: Sequence[float], metric: str, template: str, templates: Sequence[str]
) -> list[tuple[float, float]]:
    """One template's cells at ``xs`` with their 95% intervals as error bars, joined by a line only
    where there are several; returns the bars' (low, high), for the accuracy axis."""
    if not cells:
        return []
    ys = [100 * float(c.acc(metric) or 0) for c in cells]
    lo, hi = _bars(cells, metric, ys)
    ax.errorbar(
        xs,
        ys,
        yerr=[lo, hi],
        linestyle="-" if len(cells) > 1 else "none",
        linewidth=1.6,
        markersize=6,
        capsize=3,
        label=template,
        **template_style(template, templates),
    )
    return [(y - down, y + up) for y, down, up in zip(ys, lo, hi)]


def template_handles(templates: Sequence[str], curves: bool) -> list[Any]:
    """The legend's entries of the templates: a marker, with a line where the figure draws curves."""
    return [
        Line2D(
            [],
            [],
            linestyle="-" if curves else "none",
            linewidth=1.6,
            markersize=6,
            label=t,
            **template_style(t, templates),
        )
        for t in templates
    ]


def _series(cells: Sequence[Cell]) -> set[tuple[str, str, str]]:
    return {(c.family, c.method, c.skey) for c in cells}


def _bars(cells: Sequence[Any], metric: str, ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """Each point's distance to the ends of its 95% interval, in points (0: no interval known)."""
    lo, hi = [], []
    for c, y in zip(cells, ys):
        iv = c.interval(metric)
        lo.append(0.0 if iv is None else max(0.0, y - 100 * iv.low))
        hi.append(0.0 if iv is None else max(0.0, 100 * iv.high - y))
    return lo, hi


def legend_below(fig: Any, handles: list[Any]) -> None:
    """The shared legend under the panels, its entries short (what each mark is, no sentence)."""
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 6),
        frameon=False,
        bbox_to_anchor=(0.5, -0.02),
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))


#: The smallest span of an accuracy axis, in points: a narrower one would blow differences within
#: the noise of a small test set up into what looks like a ranking.
MIN_Y_SPAN = 10.0


def axis_y(ax: Any, spans: Sequence[tuple[float, float]]) -> None:
    """An accuracy axis that holds every error bar and spans at least :data:`MIN_Y_SPAN` points."""
    if not spans:
        return
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    pad = max(0.0, MIN_Y_SPAN - (high - low)) / 2 + 0.5
    top = min(100.5, high + pad)  # a little over 100: a point at 100% stays visible
    bottom = max(0.0, min(low - pad, top - MIN_Y_SPAN))
    ax.set_ylim(bottom, top)


def _count(v: float, _pos: Any = None) -> str:
    return units.human(v, 3) if v else "0"


def _plain(v: float, _pos: Any = None) -> str:
    return f"{v:g}"


def axis_x(ax: Any, xs: Sequence[float], counts: bool = False, from_zero: bool = False) -> None:
    """A resource axis a reader can read: over a decade or more, log scale with ticks at 1, 2 and
    5 of each decade; under a decade, linear (``from_zero``: from zero, so that models within 2% of
    one budget stay within 2% of each other to the eye). Counts read with K/M prefixes."""
    xs = [float(x) for x in xs if x and x > 0]
    if not xs:
        return
    fmt = FuncFormatter(_count if counts else _plain)
    if max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(ax.get_xlabel() + ", log scale")
    else:
        if from_zero:
            ax.set_xlim(0, max(xs) * 1.08)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(fmt)


def _reference(cells: list[Cell], family: str) -> Cell | None:
    """The base model at width 1, else the widest base run of the family."""
    base = [c for c in cells if c.family == family and c.method == "base" and c.done]
    if not base:
        return None
    exact = [c for c in base if c.width == 1.0]
    return exact[0] if exact else max(base, key=lambda c: c.width)


def filters_figure(
    family: str,
    counts: dict[str, list[int]],
    layer_names: Sequence[str],
    unit: str,
    width: float = 1.0,
    reading: str = "the templates' equations",
    fixed: dict[str, list[int]] | None = None,
    fixed_names: Sequence[str] = (),
) -> Any:
    """Per-layer filter counts of every template of one family, one point per template layer
    (4 for resnet50: its stages), then the layers no template sets (``fixed``: each template's
    counts of ``fixed_names``, hollow, right of a dotted line), and which reading built them."""
    names_all = [*layer_names, *fixed_names]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * len(names_all) + 2), 4.4))
    xs = list(range(1, len(layer_names) + 1))
    names = list(counts)
    for t, ys in counts.items():
        style = template_style(t, names)
        ax.plot(xs, ys, linewidth=1.6, markersize=5, label=t, **style)
        extra = (fixed or {}).get(t) or []
        if extra:
            fx = list(range(len(xs) + 1, len(xs) + 1 + len(extra)))
            ax.plot(
                [xs[-1], *fx],
                [ys[-1], *extra],
                linestyle=":",
                linewidth=1.2,
                markersize=5,
                markerfacecolor="white",
                markevery=list(range(1, len(fx) + 1)),
                **style,
            )
    if fixed_names:
        ax.axvline(len(layer_names) + 0.5, color="0.5", linestyle=":", linewidth=1)
    ticks = list(range(1, len(names_all) + 1))
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        names_all,
        rotation=45 if len(names_all) > 8 else 0,
        ha="right" if len(names_all) > 8 else "center",
        fontsize=8,
    )
    ax.set_xlabel(
        "template layer (input side on the left)"
        + (
            f"; hollow, right of the dotted line: {', '.join(fixed_names)}, set by the width alone"
            if fixed_names
            else ""
        )
    )
    ax.set_ylabel("filters (output channels)")
    ax.set_title(
        f"{family}: filters per template layer at width {width:g}, from {reading}\none count per {unit}", fontsize=10
    )
    ax.grid(True, alpha=0.25)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    return fig
