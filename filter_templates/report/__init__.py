"""Reports: the tables and figures of a results store, in one folder.

:func:`make_report` reads whatever the store holds (a finished paper grid, a sweep still running,
a quick preset) and writes ``tables/`` (Markdown, CSV, LaTeX), ``figures/`` (PNG, SVG) and an
``index.md`` that shows and links everything. Runs of a budget sweep get their own tables (budgets
in the rows, templates in the columns) and an accuracy-versus-budgeted-resource figure
(``budgets``); the width tables only hold runs of width sweeps.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import atomic_write_text, check_writable, writing
from filter_templates.core.status import FAILED, UNREACHABLE
from filter_templates.method.arch import make_arch
from filter_templates.method.measure import latency as measure_latency
from filter_templates.method.measure import resources
from filter_templates.models import get_family
from filter_templates.report import budgets, figures, tables
from filter_templates.sweep.store import Store

__all__ = ["make_report", "LATENCY_MODES"]

LATENCY_MODES = ("none", "batch1", "full")
METRICS = ("final", "best")  # the test accuracy after the last epoch, or at the best epoch


def _measure_width1(batch_size: int, latency_mode: str, threads: int | None) -> Callable:
    """Resources of a cell's architecture at width 1, without training (for untrained width 1)."""
    cache: dict[tuple, dict[str, Any] | None] = {}

    def measure(cell: Any) -> dict[str, Any] | None:
        size = int(cell.setting.get("image_size") or IMAGE_SIZE)  # counted at the size the cell's runs trained at
        key = (cell.family, cell.method, cell.classes, cell.divisor, cell.floor, size)
        if key in cache:
            return cache[key]
        try:
            family, published = tables.split_reading(cell.family)
            arch = make_arch(
                family,
                cell.method,
                1.0,
                cell.classes,
                divisor=cell.divisor,
                floor=cell.floor,
                as_published=published,
                image_size=size,
            )
        except UsageError:  # a custom template this process cannot load
            cache[key] = None
            return None
        r = resources(arch, batch_size, "cpu", memory=True, latency=False)
        out = {
            "params": r["params"],
            "flops": r["flops"],
            "train_memory_bytes": r.get("train_memory_bytes"),
            "batch_size": batch_size,
            "device": r["device"],
            "threads": r["threads"],
        }
        if latency_mode != "none":  # a short budget: the report should take seconds; marked as measured here
            model = arch.build()
            for b in (1, batch_size) if latency_mode == "full" else (1,):
                m = measure_latency(model, b, "cpu", threads=threads, input_shape=(3, size, size))
                out["latency_b1_s" if b == 1 else "latency_batch_s"], out["threads"] = m["median_s"], m["threads"]
        cache[key] = out
        return out

    return measure


def make_report(
    db: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metric: str = "final",
    latency: str = "batch1",
    threads: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write the report of results store ``db`` into folder ``out``; returns what was written.

    ``metric``: ``final`` test accuracy, or ``best``: the best test accuracy over the epochs
    (optimistic, since the epoch is picked on the test set). ``latency``: for families/templates whose
    width 1 was not trained, measure latency here at batch 1 (``batch1``, default: quick), also at
    the run batch size (``full``: slow for big models on a CPU), or not at all (``none``), with
    ``threads`` CPU threads (default: torch's choice).
    """
    if metric not in METRICS:
        raise UsageError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if latency not in LATENCY_MODES:
        raise UsageError(f"latency must be one of {', '.join(LATENCY_MODES)}, got {latency!r}")
    with Store(db, create=False) as store:
        rows = store.rows()
        counts = store.counts()
        budget_rows = store.budget_rows()
    if not rows and not budget_rows:
        raise UsageError(f"results store {str(db)!r} holds no runs yet; run 'filter-templates sweep' first")
    out = check_writable(out, "--out", folder=True)
    with writing("--out", out):
        return _write_report(db, rows, budget_rows, counts, out, metric, latency, threads, progress)


def _write_report(
    db: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    budget_rows: list[dict[str, Any]],
    counts: dict[str, int],
    out: Path,
    metric: str,
    latency: str,
    threads: int | None,
    progress: bool | None,
) -> dict[str, Any]:
    for sub in ("tables", "figures"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise UsageError(f"--out {out}: {out / sub} is a file, not a folder")
        (out / sub).mkdir(parents=True, exist_ok=True)
    cells = tables.collect(rows)
    by_budget = budgets.collect_budgets(budget_rows)
    width_cells = tables.collect([r for r in rows if r["key"] not in budgets.run_keys(budget_rows)])
    datasets = sorted({c.dataset for c in cells.values()} | {c.dataset for c in by_budget.values()})
    batch = next((r["batch_size"] for r in rows if r.get("batch_size")), None) or next(
        (int(r["config"].get("batch_size", 64)) for r in rows), 64
    )
    families = tables.family_order(c.family for c in cells.values())
    bar = Progress(total=len(datasets) * 5 + len(families), desc="report", enabled=progress)
    w = _Writer(out, metric, cells, by_budget, width_cells, _measure_width1(batch, latency, threads), bar)
    sections = [w.dataset_section(ds) for ds in datasets]
    fam_sec = w.family_section(families)
    bar.close()
    index = out / "index.md"
    atomic_write_text(
        index, "\n".join(_head(db, counts, budget_rows, metric) + sections + fam_sec + _tail(rows)) + "\n"
    )
    return {**w.written, "index": str(index), "counts": counts}


@dataclass
class _Writer:
    """One report being written into ``out``: the cells it shows and the files written so far."""

    out: Path
    metric: str
    cells: dict
    by_budget: dict
    width_cells: dict
    measure: Callable
    bar: Any
    written: dict[str, Any] = field(default_factory=lambda: {"tables": [], "figures": [], "index": None})

    def figure(self, fig: Any, stem: str, alt: str) -> list[str]:
        """Save ``fig`` as PNG and SVG under ``figures/``; the index lines that show it."""
        self.written["figures"] += [str(p) for p in figures.save(fig, self.out / "figures" / stem)]
        return [f"![{alt}](figures/{stem}.png)", "", f"[SVG](figures/{stem}.svg)", ""]

    def dataset_section(self, ds: str) -> str:
        """The tables and figures of one dataset, as the index shows them."""
        sec = [f"## {ds}", ""]
        made = []
        if any(c.dataset == ds for c in self.by_budget.values()):
            made += [
                (f"accuracy_by_budget_{ds}", budgets.budget_accuracy_table(self.by_budget, ds, self.metric)),
                (f"fits_by_budget_{ds}", budgets.budget_resource_table(self.by_budget, ds)),
            ]
        if any(c.dataset == ds for c in self.width_cells.values()):  # budget runs: the fits table has resources
            made += [
                (f"accuracy_{ds}", tables.accuracy_table(self.width_cells, ds, self.metric)),
                (f"resources_{ds}", tables.resource_table(tables.resource_rows(self.cells, ds, self.measure), ds)),
            ]
        self.bar.update()
        for stem, table in made:
            files = tables.render(table)
            for ext, text in files.items():
                p = self.out / "tables" / f"{stem}.{ext}"
                atomic_write_text(p, text)
                self.written["tables"].append(str(p))
            sec += [
                files["md"],
                f"Files: [Markdown](tables/{stem}.md) · [CSV](tables/{stem}.csv) · [LaTeX](tables/{stem}.tex)",
                "",
            ]
            self.bar.update()
        for key in sorted({c.budget_key for c in self.by_budget.values() if c.dataset == ds}):
            fig = budgets.budget_figure(self.by_budget, ds, key, self.metric)
            if fig is None:
                sec += [f"(No done run of the {key} budgets of {ds} yet: no accuracy-versus-budget figure.)", ""]
                continue
            sec += self.figure(fig, f"accuracy_vs_{key}_budget_{ds}", f"{ds}: accuracy versus the {key} budgets")
        for axis in ("params", "memory", "latency") if any(c.dataset == ds for c in self.cells.values()) else ():
            fig = figures.tradeoff_figure(self.cells, ds, axis, self.metric)
            self.bar.update()
            if fig is None:
                sec += [
                    f"(No done run of {ds} recorded its {figures.AXES[axis][1].split(' (')[0]}: "
                    f"no accuracy-versus-{axis} figure.)",
                    "",
                ]
                continue
            sec += self.figure(fig, f"accuracy_vs_{axis}_{ds}", f"{ds}: accuracy versus {axis}")
        return "\n".join(sec)

    def family_section(self, families: list[str]) -> list[str]:
        """Per family, the filters per template layer of every template its runs used."""
        sec = ["## Filters per layer", ""]
        for fam in families:
            name, published = tables.split_reading(fam)
            try:
                family = get_family(name)
            except UsageError:  # a user's model not loaded in this process: no per-layer figure
                continue
            per_layer: dict[str, list[int]] = {}
            for t in tables.template_order({c.method for c in self.cells.values() if c.family == fam}):
                try:  # the template layers of the family, in the reading the runs used
                    per_layer[t] = list(make_arch(name, t, 1.0, as_published=published).filters)
                except UsageError:
                    continue
            self.bar.update()
            if not per_layer:
                continue
            reading = "the study's published configurations" if published else "the templates' equations"
            fig = figures.filters_figure(fam, per_layer, family.layer_names, family.unit, reading=reading)
            stem = "filters_" + re.sub(r"[^A-Za-z0-9._-]+", "_", fam).strip("_")
            sec += self.figure(fig, stem, f"{fam}: filters per layer")
        return sec


def _head(
    db: str | os.PathLike[str], counts: dict[str, int], budget_rows: list[dict[str, Any]], metric: str
) -> list[str]:
    unreachable = [p for p in budget_rows if p["status"] == UNREACHABLE]
    return [
        "# filter-templates report",
        "",
        f"Results store: `{Path(db).resolve()}` — generated {_dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
        f"Runs: {counts['done']} done, {counts['failed']} failed, {counts['running']} running, "
        f"{counts['pending']} pending"
        + (f"; {len(unreachable)} budget point{'s' * (len(unreachable) != 1)} unreachable" if unreachable else "")
        + f". Accuracy: {tables.metric_words(metric).lower()}. Runs are pooled (mean over seeds) only when every "
        "other result field of their configuration is the same; runs that differ in any (recipe, epochs, "
        "test views, learning rate, ...) are separate rows, and each table's first note says which runs it "
        f"shows. Partial grids are fine: cells not run (yet) show {tables.MISSING}.",
        "",
    ]


def _tail(rows: list[dict[str, Any]]) -> list[str]:
    failed = [r for r in rows if r["status"] == FAILED]
    if not failed:
        return []
    return (
        ["## Failed runs", "", "| run | reason |", "|---|---|"]
        + [
            f"| {Path(r['run_dir'] or '').name or r['key'][:10]} | {(r['reason'] or '').replace('|', '/')} |"
            for r in failed
        ]
        + [""]
    )
