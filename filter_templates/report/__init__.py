"""Reports: the tables and figures of a results store, in one folder.

:func:`make_report` reads whatever the store holds (a finished paper grid, a sweep still running,
a quick preset) and writes ``tables/`` (Markdown, CSV, LaTeX), ``figures/`` (PNG, SVG) and an
``index.md`` and ``index.html`` that show and link everything (one page, two renderings:
:mod:`.page`). Runs of a budget sweep get their own tables (budgets
in the rows, templates in the columns) and an accuracy-versus-budgeted-resource figure
(``budgets``); the width tables only hold runs of width sweeps.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import atomic_write_text, check_writable, writing
from filter_templates.core.status import FAILED, UNREACHABLE
from filter_templates.method.arch import make_arch
from filter_templates.models import get_family
from filter_templates.report import budgets, figures, page, tables
from filter_templates.sweep.store import Store

__all__ = ["make_report", "METRICS"]

METRICS = ("final", "best")  # the test accuracy after the last epoch, or at the best epoch


def make_report(
    db: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metric: str = "final",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write the report of results store ``db`` into folder ``out``; returns what was written.

    ``metric``: ``final`` test accuracy, or ``best``: the best test accuracy over the epochs
    (optimistic, since the epoch is picked on the test set). Every resource shown is what the
    trained runs measured; the report measures nothing itself.
    """
    if metric not in METRICS:
        raise UsageError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    with Store(db, create=False) as store:
        rows = store.rows()
        counts = store.counts()
        budget_rows = store.budget_rows()
    if not rows and not budget_rows:
        raise UsageError(f"results store {str(db)!r} holds no runs yet; run 'filter-templates sweep' first")
    out = check_writable(out, "--out", folder=True)
    with writing("--out", out):
        return _write_report(db, rows, budget_rows, counts, out, metric, progress)


def _write_report(
    db: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    budget_rows: list[dict[str, Any]],
    counts: dict[str, int],
    out: Path,
    metric: str,
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
    families = tables.family_order(c.family for c in cells.values())
    bar = Progress(total=len(datasets) * 6 + len(families), desc="report", enabled=progress)
    w = _Writer(out, metric, cells, by_budget, width_cells, bar)
    blocks = _head(db, counts, budget_rows, metric, [*cells.values(), *by_budget.values()])
    for ds in datasets:
        blocks += w.dataset_section(ds)
    blocks += w.family_section(families) + _tail(rows, w)
    bar.close()
    index, index_html = out / "index.md", out / "index.html"
    atomic_write_text(index, page.markdown(blocks))
    atomic_write_text(index_html, page.to_html(blocks, TITLE))
    return {**w.written, "index": str(index), "html": str(index_html), "counts": counts}


@dataclass
class _Writer:
    """One report being written into ``out``: the cells it shows and the files written so far."""

    out: Path
    metric: str
    cells: dict
    by_budget: dict
    width_cells: dict
    bar: Any
    written: dict[str, Any] = field(default_factory=lambda: {"tables": [], "figures": [], "index": None})

    def figure(self, fig: Any, stem: str, alt: str) -> list[page.Block]:
        """Save ``fig`` as PNG and SVG under ``figures/``; the block that shows it."""
        self.written["figures"] += [str(p) for p in figures.save(fig, self.out / "figures" / stem)]
        return [page.Figure(stem, alt)]

    def table(self, table: tables.Table, stem: str) -> list[page.Block]:
        """Write ``table`` as Markdown, CSV and LaTeX under ``tables/``; the block that shows it."""
        for ext, text in tables.render(table).items():
            p = self.out / "tables" / f"{stem}.{ext}"
            atomic_write_text(p, text)
            self.written["tables"].append(str(p))
        return [page.TableBlock(table, stem)]

    def dataset_section(self, ds: str) -> list[page.Block]:
        """The tables and figures of one dataset."""
        sec: list[page.Block] = [page.Heading(ds)]
        made = []
        if any(c.dataset == ds for c in self.by_budget.values()):
            made += [
                (f"accuracy_by_budget_{ds}", budgets.budget_accuracy_table(self.by_budget, ds, self.metric)),
                (f"fits_by_budget_{ds}", budgets.budget_resource_table(self.by_budget, ds)),
                (f"separation_by_budget_{ds}", budgets.budget_separation_table(self.by_budget, ds)),
            ]
        if any(c.dataset == ds for c in self.width_cells.values()):  # budget runs: the fits table has resources
            made.append((f"accuracy_{ds}", tables.accuracy_table(self.width_cells, ds, self.metric)))
            trained = tables.resource_rows(self.width_cells, ds)
            if trained:
                made.append((f"resources_{ds}", tables.resource_table(trained, ds)))
        self.bar.update()
        for stem, table in made:
            sec += self.table(table, stem)
            self.bar.update()
        for key in sorted({c.budget_key for c in self.by_budget.values() if c.dataset == ds}):
            fig = budgets.budget_figure(self.by_budget, ds, key, self.metric)
            if fig is None:
                sec.append(
                    page.Text(f"(No done run of the {key} budgets of {ds} yet: no accuracy-versus-budget figure.)")
                )
                continue
            sec += self.figure(fig, f"accuracy_vs_{key}_budget_{ds}", f"{ds}: accuracy versus the {key} budgets")
        for axis in ("params", "memory", "latency") if any(c.dataset == ds for c in self.cells.values()) else ():
            fig = figures.tradeoff_figure(self.cells, ds, axis, self.metric)
            self.bar.update()
            if fig is None:
                sec.append(
                    page.Text(
                        f"(No done run of {ds} recorded its {figures.AXES[axis][1].split(' (')[0]}: "
                        f"no accuracy-versus-{axis} figure.)"
                    )
                )
                continue
            sec += self.figure(fig, f"accuracy_vs_{axis}_{ds}", f"{ds}: accuracy versus {axis}")
        return sec

    def family_section(self, families: list[str]) -> list[page.Block]:
        """Per family, the filters per template layer of every template its runs used."""
        sec: list[page.Block] = [page.Heading("Filters per layer")]
        for fam in families:
            name, published = tables.split_reading(fam)
            try:
                family = get_family(name)
            except UsageError:  # a user's model not loaded in this process: no per-layer figure
                continue
            per_layer: dict[str, list[int]] = {}
            fixed: dict[str, list[int]] = {}
            for t in tables.template_order({c.method for c in self.cells.values() if c.family == fam}):
                try:  # the template layers of the family, in the reading the runs used
                    arch = make_arch(name, t, 1.0, as_published=published)
                except UsageError:
                    continue
                per_layer[t] = list(arch.filters)
                n = len(family.fixed_layers)  # the layers no template sets, last in the builder's widths
                fixed[t] = list(arch.widths[len(arch.widths) - n :]) if n else []
            self.bar.update()
            if not per_layer:
                continue
            reading = "the study's published configurations" if published else "the templates' equations"
            fig = figures.filters_figure(
                fam,
                per_layer,
                family.layer_names,
                family.unit,
                reading=reading,
                fixed=fixed,
                fixed_names=family.fixed_layers,
            )
            stem = "filters_" + re.sub(r"[^A-Za-z0-9._-]+", "_", fam).strip("_")
            sec += self.figure(fig, stem, f"{fam}: filters per layer")
        return sec


TITLE = "filter-templates report"


def _head(
    db: str | os.PathLike[str],
    counts: dict[str, int],
    budget_rows: list[dict[str, Any]],
    metric: str,
    cells: list[Any],
) -> list[page.Block]:
    unreachable = [p for p in budget_rows if p["status"] == UNREACHABLE]
    return [
        page.Heading(TITLE, 1),
        page.Text(
            f"Results store: `{Path(db).resolve()}` — generated {_dt.datetime.now().isoformat(timespec='seconds')}."
        ),
        page.Text(
            f"Runs: {counts['done']} done, {counts['failed']} failed, {counts['running']} running, "
            f"{counts['pending']} pending"
            + (f"; {len(unreachable)} budget point{'s' * (len(unreachable) != 1)} unreachable" if unreachable else "")
            + f". Accuracy: {tables.metric_words(metric).lower()}. Runs are pooled (mean over seeds) only when every "
            "other result field of their configuration is the same; runs that differ in any (recipe, epochs, "
            "test views, learning rate, ...) are separate rows, and each table's first note says which runs it "
            f"shows. Partial grids are fine: cells not run (yet) show {tables.MISSING}."
        ),
        page.Text(_models_line(cells)),
    ]


def _models_line(cells: list[Any]) -> str:
    """The models' shared facts a reader needs to read any number: image size, floor and divisor."""

    def values(name: str, default: int) -> str:
        found = sorted({int(c.setting.get(name) or default) for c in cells})
        return "/".join(map(str, found)) + (" (per row)" if len(found) > 1 else "") if found else str(default)

    return (
        f"Models: {values('image_size', IMAGE_SIZE)} x {values('image_size', IMAGE_SIZE)} px input images; "
        f"every layer has at least {values('floor', 1)} filter{'' if values('floor', 1) == '1' else 's'} (the floor) "
        "and its filter count rounded to a "
        f"multiple of {values('divisor', 1)} (the divisor)."
    )


def _tail(rows: list[dict[str, Any]], w: _Writer) -> list[page.Block]:
    failed = [r for r in rows if r["status"] == FAILED]
    if not failed:
        return []
    table = tables.Table(
        title="Failed runs",
        header=["run", "reason"],
        rows=[[Path(r["run_dir"] or "").name or r["key"][:10], (r["reason"] or "").replace("|", "/")] for r in failed],
    )
    return [page.Heading("Failed runs"), *w.table(table, "failed_runs")]
