"""The report's numbers: grid cells from the results store, and the accuracy and resource tables
as Markdown, CSV and LaTeX.

A *cell* is one (dataset, family, template, width, setting): the mean over its done seeds, where
the setting is every other result field of the runs' configuration (:mod:`.settings`). Runs that
differ in anything but the seed are different rows, labelled by the fields that differ. Partial
grids are the normal case (a sweep still running, a quick preset): a cell with no done run is shown
as "—", one whose every run failed as "failed".
"""

from __future__ import annotations

import csv
import functools
import io
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from filter_templates.core import units
from filter_templates.core.load import Load
from filter_templates.core.rundir import read_summary
from filter_templates.core.status import DONE, FAILED, PENDING
from filter_templates.method.measure import mib
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.models import family_names
from filter_templates.report import intervals, settings
from filter_templates.report.intervals import Interval
from filter_templates.sweep.selection import Pooled

__all__ = [
    "Cell",
    "ResourceRow",
    "collect",
    "accuracy_table",
    "resource_rows",
    "resource_table",
    "measured_on",
    "load_of",
    "render",
    "MISSING",
    "template_order",
    "family_order",
    "fmt_bytes",
    "pct",
    "metric_words",
    "setting_order",
    "Labels",
]

MISSING = "—"


@dataclass
class Cell(Pooled):
    """All runs of one grid cell (seeds pooled: they share every other result field, ``setting``)."""

    dataset: str
    family: str
    method: str  # the template, or a pruning baseline's method: what a column compares
    width: float
    classes: int
    divisor: int = 1
    floor: int = 1
    setting: dict[str, Any] = field(default_factory=dict)
    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    other: int = 0  # pending or running

    def interval(self, metric: str = "final") -> Interval | None:
        return accuracy_interval(self.done, metric)

    def resource(self, name: str) -> float | None:
        """Median over done runs (latency varies from run to run; the rest is identical)."""
        vals = [r[name] for r in self.done if r.get(name) is not None]
        return statistics.median(vals) if vals else None

    def first(self, name: str) -> Any:
        return next((r[name] for r in self.done if r.get(name) is not None), None)

    @property
    def status(self) -> str:
        if self.done:
            return DONE
        return FAILED if self.failed else PENDING

    @property
    def skey(self) -> str:
        return settings.setting_key(self.setting)


def images(run: dict[str, Any], metric: str) -> int | None:
    """How many images ``run``'s ``metric`` accuracy was measured on: its summary's validation
    split or test set (None: the run folder is gone)."""
    summary = _summary(str(run.get("run_dir") or ""))
    if metric == "val":
        n = (summary.get("val") or {}).get("images") if isinstance(summary.get("val"), dict) else None
    else:
        n = (summary.get("data") or {}).get("test") if isinstance(summary.get("data"), dict) else None
    return int(n) if isinstance(n, int) and n > 0 else None


@functools.lru_cache(maxsize=4096)
def _summary(run_dir: str) -> dict[str, Any]:
    s = read_summary(run_dir) if run_dir else None
    return s if isinstance(s, dict) else {}


def accuracy_interval(runs: Sequence[dict[str, Any]], metric: str = "final") -> Interval | None:
    """The 95% interval of ``runs``' mean ``metric`` accuracy (:mod:`.intervals`): over the seeds,
    or for one seed over the images it was measured on."""
    vals = [r[f"{metric}_acc"] for r in runs if r.get(f"{metric}_acc") is not None]
    one = next((r for r in runs if r.get(f"{metric}_acc") is not None), None)
    return intervals.interval(vals, images(one, metric) if one is not None and len(vals) == 1 else None)


def pm(iv: Interval | None, mean: float | None) -> str:
    """A table's accuracy cell: the mean with the larger half of its 95% interval, in points."""
    if mean is None:
        return MISSING
    return f"{100 * mean:.2f}" + (f" ± {100 * iv.half:.2f}" if iv is not None else "")


def interval_words(seeds: Iterable[int]) -> str:
    """What the ± of a table or the bars of a figure are, given each cell's number of seeds."""
    counts = {n for n in seeds if n}
    kinds = [
        k
        for k, on in (
            ("t over the seeds", any(n > 1 for n in counts)),
            ("one seed: Wilson over its images", 1 in counts),
        )
        if on
    ]
    return "± the 95% interval" + (f" ({'; '.join(kinds)})" if kinds else "")


def template_order(names: Iterable[str]) -> list[str]:
    """The paper's order first, then any custom templates alphabetically."""
    return _order(names, BUILTIN_TEMPLATES)  # the paper's order, as the registry lists them


def family_order(names: Iterable[str]) -> list[str]:
    """Families in the order they are registered (the order every command lists them), then any
    other alphabetically."""
    return _order(names, family_names())


def _order(names: Iterable[str], known: Sequence[str]) -> list[str]:
    names = set(names)
    if any(n.endswith(PUBLISHED) for n in names):  # each reading right after its family
        known = [x for k in known for x in (k, k + PUBLISHED)]
    return [n for n in known if n in names] + sorted(names - set(known))


PUBLISHED = " (as published)"


def reading_label(family: str, as_published: bool) -> str:
    """The family as the report names it: runs of the study's own configurations (``--as-published``)
    are their own rows, never pooled with the equations' models of the same name."""
    return family + PUBLISHED if as_published else family


def split_reading(label: str) -> tuple[str, bool]:
    """``(family, as_published)`` of a :func:`reading_label`."""
    return (label[: -len(PUBLISHED)], True) if label.endswith(PUBLISHED) else (label, False)


def collect(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, float, str], Cell]:
    """Group store rows into cells keyed ``(dataset, family, template, width, setting key)``; the
    family is its :func:`reading_label`, the setting every other result field but the seed."""
    cells: dict[tuple[str, str, str, float, str], Cell] = {}
    for r in rows:
        config = r.get("config") or {}
        arch = config.get("arch", {})
        family = reading_label(r["family"], bool(arch.get("as_published")))
        s = settings.setting(config)
        k = (r["dataset"], family, r["method"], float(r["width"]), settings.setting_key(s))
        c = cells.get(k)
        if c is None:
            c = cells[k] = Cell(
                *k[:4],
                classes=int(r["classes"]),
                divisor=int(arch.get("divisor", 1)),
                floor=int(arch.get("floor", 1)),
                setting=s,
            )
        if r["status"] == DONE:
            c.done.append(r)
        elif r["status"] == FAILED:
            c.failed.append(r)
        else:
            c.other += 1
    return cells


# --------------------------------------------------------------------------------------------
# Tables as plain data: a header, rows of cells, and which cells to emphasise
# --------------------------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) of emphasised cells
    notes: list[str] = field(default_factory=list)
    align: str = ""  # one of l/r per column
    csv_rows: list[list[Any]] | None = None  # raw values for CSV (defaults to rows)
    csv_header: list[str] | None = None


def pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return MISSING
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def metric_words(metric: str) -> str:
    """What a table's accuracy is, said plainly: the best epoch's test accuracy is chosen on the
    test set itself, so it is optimistic and never a selection."""
    if metric == "best":
        return "Best top-1 test accuracy over the epochs (%; optimistic: the epoch is picked on the test set)"
    return "Final top-1 test accuracy (%)" if metric == "final" else f"{metric}_acc (%)"


def setting_order(s: dict[str, Any]) -> tuple:
    """Rows of one family and width: by recipe (as ``recipe.RECIPES`` lists them), then settings."""
    names = list(settings.RECIPES)
    return (names.index(s["recipe"]) if s.get("recipe") in names else len(names), settings.setting_key(s))


def _csv_value(v: Any) -> Any:
    return "" if v is None else v if isinstance(v, (str, int, float)) else settings.fmt_value(v)


@dataclass
class Labels:
    """The columns that tell rows of different settings apart in one table: in Markdown and LaTeX
    the fields a reader needs (:func:`settings.label_fields`) and the test views when they differ,
    in the CSV every differing field."""

    settings: dict[str, dict[str, Any]]  # setting key -> setting, in row order
    shown: list[str]
    every: list[str]
    views: bool

    @classmethod
    def of(cls, given: Iterable[dict[str, Any]]) -> "Labels":
        by: dict[str, dict[str, Any]] = {}
        for s in given:
            by.setdefault(settings.setting_key(s), s)
        ordered = dict(sorted(by.items(), key=lambda kv: setting_order(kv[1])))
        vals = list(ordered.values())
        return cls(
            ordered,
            settings.label_fields(vals),
            settings.differing(vals),
            len({settings.views_of(s) for s in vals}) > 1,
        )

    def header(self) -> list[str]:
        return [*self.shown, *(["test views"] if self.views else [])]

    def csv_header(self) -> list[str]:
        return [*self.every, *(["test_views"] if self.views else [])]

    def cells(self, skey: str) -> list[str]:
        s = self.settings[skey]
        return [settings.fmt_value(s.get(k)) for k in self.shown] + ([str(settings.views_of(s))] if self.views else [])

    def csv_cells(self, skey: str) -> list[Any]:
        s = self.settings[skey]
        return [_csv_value(s.get(k)) for k in self.every] + ([settings.views_of(s)] if self.views else [])

    def caption(self) -> str:
        return settings.caption(list(self.settings.values()))


def _acc_row(cells: dict, key: tuple, templates: list[str], metric: str) -> tuple[list[str], list[Any], int | None]:
    """One row's accuracy cells (Markdown, CSV) and the column of its best template (None: no best)."""
    found = {t: cells.get((*key[:2], t, *key[2:])) for t in templates}
    accs = {t: c.acc(metric) for t, c in found.items() if c is not None}
    vals = {t: a for t, a in accs.items() if a is not None}
    best = max(vals, key=vals.__getitem__) if vals else None
    row: list[str] = []
    raw: list[Any] = []
    for t in templates:
        c = found[t]
        if c is None or c.status == PENDING:
            row.append(MISSING)
            raw.append("")
        elif c.status == FAILED:
            row.append(FAILED)
            raw.append(FAILED)
        else:
            row.append(pm(c.interval(metric), c.acc(metric)))
            raw.append(round(100 * c.acc(metric), 4))
    return row + [best or MISSING], raw + [best or ""], (templates.index(best) if best and len(vals) > 1 else None)


def accuracy_table(cells: dict, dataset: str, metric: str = "final") -> Table:
    """Rows family x width (widest first) x setting, one column per template; the best template of
    each row is emphasised. The paper's table is the ``width = 1`` rows."""
    mine = [c for c in cells.values() if c.dataset == dataset]
    templates = template_order(c.method for c in mine)
    labels = Labels.of(c.setting for c in mine)
    header = ["family", "width", *labels.header(), *templates, "best"]
    rows: list[list[str]] = []
    raw: list[list[Any]] = []
    bold: set[tuple[int, int]] = set()
    seeds = max((len(c.done) for c in mine), default=0)
    present = {(c.family, c.width, c.skey) for c in mine}
    for fam in family_order(c.family for c in mine):
        for w in sorted({c.width for c in mine if c.family == fam}, reverse=True):
            for skey in (k for k in labels.settings if (fam, w, k) in present):
                row, rr, best = _acc_row(cells, (dataset, fam, w, skey), templates, metric)
                lead = len(header) - len(templates) - 1
                if best is not None:
                    bold.add((len(rows), lead + best))
                rows.append([fam, f"{w:g}", *labels.cells(skey), *row])
                raw.append([fam, w, *labels.csv_cells(skey), *rr])
    notes = [
        labels.caption(),
        metric_words(metric)
        + (", mean over seeds" if seeds > 1 else "")
        + f", {interval_words(len(c.done) for c in mine)}; emphasised: the best template of each row; "
        + f"{MISSING}: not run (yet); failed: every run of the cell failed (reasons in the report's index.md).",
    ]
    return Table(
        title=f"Accuracy on {dataset}",
        header=header,
        rows=rows,
        bold=bold,
        notes=notes,
        align="ll" + "l" * len(labels.header()) + "r" * len(templates) + "l",
        csv_rows=raw,
        csv_header=["family", "width", *labels.csv_header(), *templates, "best"],
    )


# --------------------------------------------------------------------------------------------
# Resources of the trained models
# --------------------------------------------------------------------------------------------


@dataclass
class ResourceRow:
    """What one trained cell's model costs, as its runs measured it (latency: the median over seeds)."""

    family: str
    method: str  # the template, or a pruning baseline's method: what a column compares
    width: float
    classes: int
    params: int | None = None
    flops: int | None = None
    train_memory_bytes: int | None = None
    batch_size: int | None = None
    latency_batch_s: float | None = None
    latency_b1_s: float | None = None
    measured_on: str = MISSING  # where latency and memory were measured: device, threads, load
    setting: dict[str, Any] = field(default_factory=dict)  # of the runs it stands for


def resource_rows(cells: dict, dataset: str) -> list[ResourceRow]:
    """One row per trained cell of ``dataset`` (family, template, width widest first, setting)."""
    mine = [c for c in cells.values() if c.dataset == dataset and c.done]
    order = list(Labels.of(c.setting for c in mine).settings)
    out = []
    for fam in family_order(c.family for c in mine):
        for t in template_order(c.method for c in mine if c.family == fam):
            here = [c for c in mine if (c.family, c.method) == (fam, t)]
            for c in sorted(here, key=lambda c: (-c.width, order.index(c.skey))):
                out.append(
                    ResourceRow(
                        fam,
                        t,
                        c.width,
                        c.classes,
                        params=c.first("params"),
                        flops=c.first("flops"),
                        train_memory_bytes=c.first("train_memory_bytes"),
                        batch_size=c.first("batch_size"),
                        latency_batch_s=c.resource("latency_batch_s"),
                        latency_b1_s=c.resource("latency_b1_s"),
                        measured_on=measured_on(c.done),
                        setting=c.setting,
                    )
                )
    return out


def measured_on(runs: Sequence[dict[str, Any]]) -> str:
    """Where ``runs`` measured latency and memory, in one phrase: device, threads and whether the
    machine was busy (the load recorded with the measurement; runs that recorded none say so)."""
    res = [r.get("resources") or {} for r in runs]
    devices = sorted({str(x.get("device_name") or x.get("device")) for x in res if x.get("device")})
    if not devices:
        return MISSING
    threads = sorted({int(x["threads"]) for x in res if x.get("threads")})
    loads = [load_of(x) for x in res]
    busy = [x for x in loads if x is not None and x.busy]
    if busy:
        state = f"busy ({busy[0].words().split(': ')[0]})"
    elif loads and all(x is not None for x in loads):
        state = "idle"
    else:
        state = "load not recorded"
    return f"{', '.join(devices)}, {'/'.join(map(str, threads))} thread{'s' * (threads != [1])}, {state}"


def load_of(resources: dict[str, Any]) -> Load | None:
    """The load a run's resources recorded beside their timing (None: not recorded)."""
    x = resources.get("load")
    if not isinstance(x, dict) or not x.get("cores"):
        return None
    return Load(x.get("load_before"), x.get("others_during"), int(x["cores"]))


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return MISSING
    return f"{mib(n):,.1f}"


def _ms(s: float | None) -> str:
    if s is None:
        return MISSING
    ms = 1000 * s
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:,.1f}"


def _resource_columns(rows: list[ResourceRow]) -> list[tuple[str, Callable[[ResourceRow], str], str]]:
    """The resource table's columns after the labels: ``(header, display, ResourceRow field)``. A
    column no row has a value for is left out, never shown as a column of dashes."""
    batch = next((r.batch_size for r in rows if r.batch_size), 64)
    flops_prefix, flops_scale = units.prefix_for(r.flops for r in rows)
    cols: list[tuple[str, Callable[[ResourceRow], str], str]] = [
        ("params", lambda r: units.human(r.params), "params"),
        (f"{flops_prefix}FLOPs / image", lambda r: _num(r.flops, flops_scale), "flops"),
        (f"train memory (MiB, batch {batch})", lambda r: fmt_bytes(r.train_memory_bytes), "train_memory_bytes"),
        (f"latency batch {batch} (ms)", lambda r: _ms(r.latency_batch_s), "latency_batch_s"),
        ("latency batch 1 (ms)", lambda r: _ms(r.latency_b1_s), "latency_b1_s"),
    ]
    kept = [c for c in cols if any(getattr(r, c[2]) is not None for r in rows)]
    if any(r.latency_batch_s is not None or r.latency_b1_s is not None for r in rows):
        kept.append(("measured on", lambda r: r.measured_on, "measured_on"))
    return kept


def _num(v: float | None, scale: float) -> str:
    return MISSING if v is None else f"{v / scale:,.3g}"


def resource_table(rows: list[ResourceRow], dataset: str) -> Table:
    """What every trained model of ``dataset`` costs: one row per family, template, width and setting."""
    labels = Labels.of(r.setting for r in rows)
    cols = _resource_columns(rows)
    lead = ["family", "template", "width", *labels.header()]
    return Table(
        title=f"Resources of the trained models ({dataset})",
        header=[*lead, *(h for h, _, _ in cols)],
        rows=[
            [
                r.family,
                r.method,
                f"{r.width:g}",
                *labels.cells(settings.setting_key(r.setting)),
                *(f(r) for _, f, _ in cols),
            ]
            for r in rows
        ],
        notes=[
            labels.caption(),
            f"{rows[0].classes if rows else '?'} classes. Parameters and FLOPs are exact; training memory is "
            "one SGD step at the run's batch size (on CPU the exact account of its tensors, on CUDA the "
            "allocator peak); latency is the median eval forward pass in eager PyTorch over the seeds (the budget "
            "tables of a latency budget use the runtime it was fitted in), comparable only between "
            "rows measured on the same device and thread count, and not on a busy machine.",
        ],
        align="lll"
        + "l" * len(labels.header())
        + "r" * sum(name != "measured_on" for _, _, name in cols)
        + "l" * any(name == "measured_on" for _, _, name in cols),
        csv_header=["family", "template", "width", *labels.csv_header(), *(name for _, _, name in cols)],
        csv_rows=[
            [
                r.family,
                r.method,
                r.width,
                *labels.csv_cells(settings.setting_key(r.setting)),
                *(getattr(r, name) for _, _, name in cols),
            ]
            for r in rows
        ],
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _md(t: Table) -> str:
    lines = [f"### {t.title}", ""]
    lines.append("| " + " | ".join(t.header) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in (t.align or "l" * len(t.header))) + "|")
    for i, row in enumerate(t.rows):
        cells = [f"**{v}**" if (i, j) in t.bold else v for j, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [n for n in t.notes]
    return "\n".join(lines) + "\n"


def _csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.csv_header or t.header)
    for row in t.csv_rows if t.csv_rows is not None else t.rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


_TEX_ESCAPE = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "—": "---",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
}


def _tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))


def _tex(t: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``)."""
    align = t.align or "l" * len(t.header)
    lines = [
        "% " + _tex_escape(t.title),
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in t.header) + r" \\",
        r"\midrule",
    ]
    prev_family = None
    for i, row in enumerate(t.rows):
        cells = []
        for j, v in enumerate(row):
            s = _tex_escape(v)
            if j == 0:
                if v == prev_family:
                    s = ""
                elif prev_family is not None:
                    lines.append(r"\midrule")
                prev_family = v
            cells.append(rf"\textbf{{{s}}}" if (i, j) in t.bold else s)
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_tex_escape(t.title)}. {' '.join(_tex_escape(n) for n in t.notes)}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def render(t: Table) -> dict[str, str]:
    """``{"md": ..., "csv": ..., "tex": ...}``."""
    return {"md": _md(t), "csv": _csv(t), "tex": _tex(t)}
