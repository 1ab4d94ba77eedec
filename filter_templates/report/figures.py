"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

Per dataset: accuracy versus parameters, versus training memory and versus latency, one panel per
family (and per setting, when the runs differ in more than the seed: another recipe, other epochs;
each panel's title says which) and one curve per template across the width multipliers, with dashed lines through the
base model at width 1 (or, when width 1 was not trained, through the widest base run, as the
legend says). Per family: the per-layer filter counts of every template.
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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from filter_templates.core.rundir import atomic_write
from filter_templates.method.measure import MIB
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.report import settings
from filter_templates.report.tables import (
    Cell,
    Labels,
    family_order,
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
]

# x-axis: (cell resource column, axis label, scale to display units)
AXES: dict[str, tuple[str, str, float]] = {
    "params": ("params", "parameters (millions, log scale)", 1e-6),
    "memory": ("train_memory_bytes", "training memory per batch (MiB, log scale)", 1 / MIB),
    "latency": ("latency_batch_s", "inference latency per batch (ms, log scale)", 1e3),
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
    """Accuracy versus one resource for ``dataset``; None when no done run recorded that resource."""
    column, xlabel, scale = AXES[axis]
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
    devices = sorted(
        {
            f"{c.first('resource_device')}, {c.first('threads')} thread{'s' if c.first('threads') != 1 else ''}"
            for c in mine
            if c.first("resource_device")
        }
    )
    ref_widths: dict[str, float] = {}
    for ax, (fam, skey, panel_title) in zip(axes.flat, where):
        plotted = False
        xs_all: list[float] = []
        panel = [c for c in mine if c.skey == skey]
        for t in templates:
            pts = sorted((c for c in panel if c.family == fam and c.method == t), key=lambda c: c.width)
            xy = [(c.resource(column), c.acc(metric), c.width) for c in pts]
            xy = [(x * scale, 100 * y, w) for x, y, w in xy if x is not None and y is not None and x > 0]
            if not xy:
                continue
            xs, ys, ws = zip(*xy)
            xs_all += xs
            ax.plot(xs, ys, linestyle="-", linewidth=1.6, markersize=6, label=t, **template_style(t, templates))
            plotted = True
        ref = _reference(panel, fam)
        if ref is not None:
            ref_widths[fam] = ref.width
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
        if plotted:
            _log_x(ax, xs_all)
    for ax in list(axes.flat)[len(where) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], linestyle="-", linewidth=1.6, markersize=6, label=t, **template_style(t, templates))
        for t in templates
    ]
    if ref_widths:
        others = [f"{fam} {w:g}" for fam, w in ref_widths.items() if w != 1.0]
        ref_label = "base model at width 1"
        if others:
            ref_label += f" (not trained for all: widest trained base instead, {', '.join(others)})"
        handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1, label=ref_label))
    what = {"params": "parameters", "memory": "training memory", "latency": "inference latency"}[axis]
    title = f"{dataset}: accuracy versus {what}, one curve per template across width multipliers"
    if axis in ("latency", "memory") and devices:
        title += f"\nmeasured on {'; '.join(devices)}"
    title += "\n" + runs_line(mine)
    fig.suptitle(title, fontsize=11)
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 6),
        frameon=False,
        bbox_to_anchor=(0.5, -0.02),
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _fmt(v: float, _pos: Any = None) -> str:
    return f"{v:g}"


def _log_x(ax: Any, xs: Sequence[float]) -> None:
    """Log x when the values span enough to need it, with plain-number tick labels either way."""
    xs = [float(x) for x in xs if x and x > 0]
    if not xs:
        return
    span = max(xs) / min(xs)
    if span < 3:  # less than half a decade: a linear axis reads better
        ax.xaxis.set_major_formatter(FuncFormatter(_fmt))
        ax.set_xlabel(ax.get_xlabel().replace(", log scale", ""))
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt))
    if span < 100:  # under two decades: label some multiples too, else only powers of ten
        subs = (2.0, 3.0, 4.0, 6.0, 8.0) if span < 10 else (2.0, 5.0)
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_minor_formatter(FuncFormatter(_fmt))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


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
) -> Any:
    """Per-layer filter counts of every template of one family, one point per template layer
    (4 for resnet50: its stages), and which reading built them."""
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * len(layer_names) + 2), 4.4))
    xs = list(range(1, len(layer_names) + 1))
    names = list(counts)
    for t, ys in counts.items():
        ax.plot(xs, ys, linewidth=1.6, markersize=5, label=t, **template_style(t, names))
    ax.set_xticks(xs)
    ax.set_xticklabels(
        layer_names,
        rotation=45 if len(layer_names) > 8 else 0,
        ha="right" if len(layer_names) > 8 else "center",
        fontsize=8,
    )
    ax.set_xlabel("template layer (input side on the left)")
    ax.set_ylabel("filters (output channels)")
    ax.set_title(
        f"{family}: filters per template layer at width {width:g}, from {reading}\n(one count per {unit})", fontsize=10
    )
    ax.grid(True, alpha=0.25)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    return fig
