"""The report of a budget sweep: budgets in the rows, templates in the columns.

A *budget cell* is one (dataset, family, budget, template, setting): its seeds pooled, like a width
cell; points of different settings (recipe, epochs, ...: :mod:`.settings`) are different rows.
Its model is the one the fitter chose for the budget; its resources come from the trained run
when it is done, else from the fit. An unreachable budget shows as "unreachable", with the reason
in the notes of the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from matplotlib.lines import Line2D

from filter_templates.core import units
from filter_templates.core.status import DONE, FAILED, PENDING, UNREACHABLE
from filter_templates.method.fit import format_value
from filter_templates.method.measure import MIB
from filter_templates.report import figures, settings
from filter_templates.report.intervals import Interval
from filter_templates.report.tables import (
    MISSING,
    Labels,
    Table,
    accuracy_interval,
    family_order,
    fmt_bytes,
    interval_words,
    metric_words,
    pm,
    reading_label,
    template_order,
)
from filter_templates.sweep import selection
from filter_templates.sweep.selection import RESOURCE_OF, rank_key, ranked

__all__ = [
    "BudgetCell",
    "RESOURCE_OF",
    "collect_budgets",
    "budget_accuracy_table",
    "budget_resource_table",
    "budget_figure",
    "run_keys",
]

#: Each budget key's axis: label, scale to display units, whether it reads with K/M prefixes.
_AXIS = {
    "params": ("parameters", 1.0, True),
    "flops": ("forward FLOPs per image", 1.0, True),
    "memory": ("training memory per batch (MiB)", 1 / MIB, False),
    "latency": ("inference latency per batch (ms)", 1e3, False),
}


@dataclass
class BudgetCell(selection.BudgetCell):
    """A candidate (:class:`sweep.selection.BudgetCell`) as the report shows it, with the interval of
    its accuracy over seeds."""

    def interval(self, metric: str = "final") -> Interval | None:
        return accuracy_interval(self.done, metric)


def _known(value: float | None) -> float:
    """``value``, which the caller's selection guarantees is there."""
    assert value is not None
    return value


def run_keys(budget_rows: Sequence[dict[str, Any]]) -> set[str]:
    """The runs rows that belong to budget points (the rest are width runs)."""
    return {p["run_key"] for p in budget_rows if p.get("run_key")}


def collect_budgets(budget_rows: Sequence[dict[str, Any]]) -> dict[tuple, BudgetCell]:
    """Group ``Store.budget_rows()`` into cells keyed ``(dataset, family, budget_key, budget_value,
    template, setting key)``; the family is its reading label, as in the width tables."""
    cells: dict[tuple, BudgetCell] = {}
    for p in budget_rows:
        ident = p.get("ident") or {}
        family = reading_label(p["family"], bool((ident.get("arch") or {}).get("as_published")))
        s = settings.setting(ident)
        k = (p["dataset"], family, p["budget_key"], float(p["budget_value"]), p["method"], settings.setting_key(s))
        cells.setdefault(k, BudgetCell(*k[:5], setting=s)).points.append(p)
    return cells


def _budget_rows(mine: list[BudgetCell], labels: Labels) -> list[tuple[str, str, float, str]]:
    """(family, key, value, setting key) rows: family order, then key, then the largest budget first,
    then the settings in the labels' order."""
    keys = {(c.family, c.budget_key, c.budget_value, c.skey) for c in mine}
    rank = {f: i for i, f in enumerate(family_order(k[0] for k in keys))}
    order = {k: i for i, k in enumerate(labels.settings)}
    return sorted(keys, key=lambda k: (rank[k[0]], k[1], -k[2], order[k[3]]))


#: The accuracy that ranks a budget row's templates when its runs have one: the validation split's
#: (as ``reduce`` ranks them), with the test accuracy shown beside it and never used to choose.
RANKS = "val"


def _winner(present: dict[str, BudgetCell], metric: str) -> str | None:
    """The template the row's ranking picks, as ``reduce`` picks it (:func:`sweep.selection.choose`:
    the cheapest of those not separable from the most accurate on ``metric``'s split); for the best
    test accuracy over epochs, by the ranking key alone."""
    if metric in ("val", "final"):
        on = "val_acc" if metric == "val" else "final_acc"
        return selection.choose(list(present.values()), on, template_order(present)).winner
    vals = {t: a for t, a in ((t, c.acc(metric)) for t, c in present.items()) if a is not None}
    return min(vals, key=lambda t: rank_key(vals[t], present[t].cost, 0)) if vals else None


def budget_accuracy_table(cells: dict[tuple, BudgetCell], dataset: str, metric: str = "final") -> Table:
    """Rows family x budget x setting, one column per template. Where the runs hold a validation
    split, each budget has a validation row (what ranks, its winner emphasised and named) and a test
    row beside it (the winner's test accuracy emphasised too); otherwise one test row, its best
    emphasised. Mean over seeds with the 95% interval."""
    mine = [c for c in cells.values() if c.dataset == dataset]
    templates = template_order(c.method for c in mine)
    labels = Labels.of(c.setting for c in mine)
    ranked = any(c.accs(RANKS) for c in mine)
    splits = [(RANKS, "validation (ranks)"), (metric, "test")] if ranked else [(metric, "test")]
    split_col = ["accuracy"] if ranked else []  # which split a row holds: only where there are two
    header = ["family", "budget", *labels.header(), *split_col, *templates, "winner" if ranked else "best"]
    rows: list[list[str]] = []
    raw: list[list[Any]] = []
    bold: set[tuple[int, int]] = set()
    lead = len(header) - len(templates) - 1
    for fam, key, value, skey in _budget_rows(mine, labels):
        row_cells = {t: cells.get((dataset, fam, key, value, t, skey)) for t in templates}
        present = {t: c for t, c in row_cells.items() if c is not None}
        best = _winner(present, splits[0][0])
        for split, words in splits:
            row = [fam, f"{key} ≤ {format_value(key, value)}", *labels.cells(skey), *([words] if ranked else [])]
            rr = [fam, key, value, *labels.csv_cells(skey), *([split] if ranked else [])]
            for j, t in enumerate(templates):
                c = row_cells[t]
                status = c.status if c is not None else PENDING
                if c is not None and status == DONE and c.acc(split) is not None:
                    row.append(pm(c.interval(split), c.acc(split)))
                    rr.append(round(100 * _known(c.acc(split)), 4))
                    if t == best and len(present) > 1:
                        bold.add((len(rows), lead + j))
                else:
                    row.append(MISSING if status in (PENDING, DONE) else status)
                    rr.append("" if status in (PENDING, DONE) else status)
            rows.append(row + [best or MISSING])
            raw.append(rr + [best or ""])
    seeds = max((len(c.done) for c in mine), default=0)
    notes = [
        labels.caption(),
        (
            "Final validation accuracy (%), which ranks, and beside it the "
            + metric_words(metric)[0].lower()
            + metric_words(metric)[1:]
            if ranked
            else metric_words(metric)
        )
        + " of the widest model of each template within the budget"
        + (", mean over seeds" if seeds > 1 else "")
        + f", {interval_words(len(c.done) for c in mine)}. "
        + (
            "Ranked on the validation split held out of the training set (the winner: the cheapest in the "
            "budget's resource of those not separable from the most accurate, as in the separation table); the "
            "winner is emphasised in both rows, its test accuracy is for the reader and never chose it. "
            if ranked
            else "Emphasised: the best template of each row on the test set (the cheapest in the budget's "
            "resource of those not separable from the most accurate). "
        )
        + f"{MISSING}: not run (yet); unreachable: even the template's smallest model is over the budget; "
        "failed: every run failed.",
    ]
    return Table(
        title=f"Accuracy by budget on {dataset}",
        header=header,
        rows=rows,
        bold=bold,
        notes=notes,
        align="ll" + "l" * len(labels.header()) + "l" * len(split_col) + "r" * len(templates) + "l",
        csv_rows=raw,
        csv_header=["family", "budget_key", "budget_value", *labels.csv_header(), *split_col, *templates, header[-1]],
    )


def budget_resource_table(cells: dict[tuple, BudgetCell], dataset: str) -> Table:
    """One row per family x budget x setting x template: the fitted width and what the model costs."""
    mine = [c for c in cells.values() if c.dataset == dataset]
    labels = Labels.of(c.setting for c in mine)
    flops_prefix, flops_scale = units.prefix_for(c.resource("flops") for c in mine)
    header = [
        "family",
        "budget",
        *labels.header(),
        "template",
        "width",
        "params",
        f"{flops_prefix}FLOPs / image",
        "train memory (MiB)",
        "of budget",
        "status",
    ]
    rows, raw, reasons = [], [], []
    for fam, key, value, skey in _budget_rows(mine, labels):
        row_templates = [
            c.method for c in mine if (c.family, c.budget_key, c.budget_value, c.skey) == (fam, key, value, skey)
        ]
        for t in template_order(row_templates):
            c = cells[(dataset, fam, key, value, t, skey)]
            params, flops, mem = c.resource("params"), c.resource("flops"), c.resource("train_memory_bytes")
            used = c.resource(RESOURCE_OF[key])
            status = c.status
            if status in (UNREACHABLE, FAILED) and c.reason:
                reasons.append(f"{fam} {t} {key} ≤ {format_value(key, value)}: {c.reason}")
            rows.append(
                [
                    fam,
                    f"{key} ≤ {format_value(key, value)}",
                    *labels.cells(skey),
                    t,
                    MISSING if c.width is None else f"{c.width:g}",
                    units.human(params),
                    MISSING if flops is None else f"{flops / flops_scale:,.3g}",
                    fmt_bytes(mem),
                    MISSING if used is None else f"{used / value:.1%}",
                    status,
                ]
            )
            raw.append(
                [fam, key, value, *labels.csv_cells(skey), t, c.width, params, flops, mem, used, status, c.reason or ""]
            )
    notes = [
        labels.caption(),
        "The model each template gets within the budget (the largest width multiplier that fits, "
        "as 'fit' finds it); resources of the trained run, or as fitted when it has not finished.",
    ]
    notes += [f"- {r}" for r in reasons]
    return Table(
        title=f"Fitted models by budget ({dataset})",
        header=header,
        rows=rows,
        notes=notes,
        align="ll" + "l" * len(labels.header()) + "l" + "r" * 5 + "l",
        csv_header=[
            "family",
            "budget_key",
            "budget_value",
            *labels.csv_header(),
            "template",
            "width",
            "params",
            "flops",
            "train_memory_bytes",
            "budgeted_resource",
            "status",
            "reason",
        ],
        csv_rows=raw,
    )


def record_words(record: dict[str, Any]) -> str:
    """Where a latency record was measured, for an axis label: runtime, batch, threads, machine."""
    threads = record.get("threads")
    return (
        f"{record['runtime']} {record.get('version', '')}, batch {record.get('batch')}, "
        f"{threads} thread{'s' if threads != 1 else ''}, {record.get('device_name')}"
    )


def budget_figure(cells: dict[tuple, BudgetCell], dataset: str, key: str, metric: str = "final") -> Any | None:
    """Accuracy versus the budgeted resource ``key``: one panel per family, one line per template
    through its models at each budget (x: what the model uses; one budget: one point each), dashed
    lines at the budgets, 95% intervals as error bars. None when no cell of ``key`` is done."""
    plt = figures.plt
    column = RESOURCE_OF[key]
    label, scale, counts = _AXIS[key]
    mine = [c for c in cells.values() if c.dataset == dataset and c.budget_key == key]
    done = [c for c in mine if c.acc(metric) is not None and c.resource(column)]
    if not done:
        return None
    templates = template_order(c.method for c in done)
    record = next((r for r in (c.latency_record() for c in done) if r), None)
    if key == "latency" and record is not None:  # the paper's Figure 5, in the deployment runtime
        label = f"latency (ms): {record_words(record)}"
    where = figures.panels(done)
    rows, cols = figures._grid(len(where))
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax, (fam, skey, panel_title) in zip(axes.flat, where):
        xs_all: list[float] = []
        ys_all: list[tuple[float, float]] = []
        panel = [c for c in done if c.family == fam and c.skey == skey]
        for value in sorted({c.budget_value for c in panel}):
            ax.axvline(value * scale, color="0.35", linestyle="--", linewidth=1)
            xs_all.append(value * scale)
        for t in templates:
            pts = sorted((c for c in panel if c.method == t), key=lambda c: c.budget_value)
            if not pts:
                continue
            xs = [_known(c.resource(column)) * scale for c in pts]  # `done` holds cells with both
            ys_all += figures.draw_series(ax, pts, xs, metric, t, templates)
            xs_all += xs
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(label)
        ax.set_ylabel(figures.accuracy_label(metric))
        ax.grid(True, which="both", alpha=0.25)
        figures.axis_x(ax, xs_all, counts, from_zero=True)
        figures.axis_y(ax, ys_all)
    for ax in list(axes.flat)[len(where) :]:
        ax.set_visible(False)
    several = len({c.budget_value for c in done}) > 1
    handles = figures.template_handles(templates, several)
    handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1, label="budget"))
    fig.suptitle(
        f"{dataset}: accuracy versus {label.split(' (')[0]} at "
        + (f"each {key} budget, one line per template" if several else f"the {key} budget, one point per template")
        + f"\nbars: {interval_words(len(c.done) for c in done)}\n"
        + figures.runs_line(done),
        fontsize=10,
    )
    figures.legend_below(fig, handles)
    return fig


def budget_separation_table(cells: dict[tuple, BudgetCell], dataset: str) -> Table:
    """Per budget row, every finished candidate against the winner that ``reduce`` picks
    (:func:`sweep.selection.choose`): its accuracy on the split that ranks, the difference from the
    winner's with the 95% paired interval and p, and whether it is tied with the most accurate."""
    mine = [c for c in cells.values() if c.dataset == dataset]
    labels = Labels.of(c.setting for c in mine)
    header = ["family", "budget", *labels.header(), "template", "ranks on %", "vs winner, points [95%]", "p", "tied"]
    rows: list[list[str]] = []
    raw: list[list[Any]] = []
    bold: set[tuple[int, int]] = set()
    for fam, key, value, skey in _budget_rows(mine, labels):
        group = [c for c in mine if (c.family, c.budget_key, c.budget_value, c.skey) == (fam, key, value, skey)]
        for c, on, sep, won, tied in _against_winner(group):
            if won:
                bold.add((len(rows), len(header) - 5))
            interval = MISSING if sep is None else sep.points()
            p = MISSING if sep is None else f"{sep.p:.3f}"
            budget = f"{key} ≤ {format_value(key, value)}"
            rows.append(
                [
                    fam,
                    budget,
                    *labels.cells(skey),
                    c.method,
                    pm(c.interval("val" if on == "val_acc" else "final"), c.score(on)),
                    "winner" if won else interval,
                    p,
                    "yes" if tied else "no",
                ]
            )
            numbers = [None] * 4 if sep is None else [sep.difference, sep.low, sep.high, sep.p]
            raw.append([fam, key, value, *labels.csv_cells(skey), c.method, c.score(on), *numbers, tied])
    notes = [
        labels.caption(),
        "How sure the pick is: each finished candidate's accuracy on the split that ranks (validation, "
        "else test), mean over seeds; its difference from the winner in points with the 95% paired-bootstrap "
        "interval over the same images (and seeds); tied: not separable from the most accurate. The winner "
        "(emphasised) is the cheapest tied candidate in the budget's resource.",
    ]
    csv_header = [*labels.csv_header(), "template", "acc", "difference", "low", "high", "p", "tied"]
    return Table(
        title=f"Separation from the winner by budget ({dataset})",
        header=header,
        rows=rows,
        bold=bold,
        notes=notes,
        align="ll" + "l" * len(labels.header()) + "lrrrl",
        csv_rows=raw,
        csv_header=["family", "budget_key", "budget_value", *csv_header],
    )


def _against_winner(group: list[BudgetCell]) -> list[tuple[BudgetCell, str, Any, bool, bool]]:
    """The finished candidates of one budget row in ranking order, each with the metric that ranks,
    its separation from the winner (None: the winner, or no outcomes), whether it won and is tied."""
    on = "val_acc" if any(c.acc("val") is not None for c in group) else "final_acc"
    order = template_order(c.method for c in group)
    choice = selection.choose(group, on, order)
    done = [c for c in group if c.score(on) is not None]
    ranks = ranked(done, lambda c: c.score(on), lambda c: c.cost, lambda c: c.method, order)
    return [
        (c, on, choice.separations.get(c.method), c.method == choice.winner, c.method in choice.tied) for c in ranks
    ]
