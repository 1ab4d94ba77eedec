"""``reduce``: the study's method for one model and one budget, as one call.

Fit every template to the budget (base always among them: it is the usual "scale the original
uniformly" baseline), train the candidates through the sweep machinery, rank them, report and
export the winner. Everything lands in one folder, so running the same call again resumes:

* ``DIR/results.sqlite`` -- the results store (done runs are skipped, partial ones resume);
* ``DIR/runs/`` -- one run folder per candidate and seed;
* ``DIR/report/`` -- tables and figures of the store (``report.make_report``);
* the winner's export beside its weights in its run folder (ONNX where the onnx extra is
  installed, else TorchScript; ``export.export_run``).

Selection reads a validation split, never the test set: every candidate trains on the same
training images less the same held-out ones (``--val-split``, by default 10% of the training set
and at most 5,000 images: :func:`data.split.default`), candidates rank by their final validation
accuracy (mean over the seeds that finished, then the budget's resource: :mod:`sweep.selection`);
the winner is the cheapest of those not separable from the most accurate on the same validation
images (a paired bootstrap: :mod:`sweep.separation`), and its export is its seed with the best
validation accuracy. Test accuracy is reported beside it, for the
reader. A dataset with its own validation set (a folder's ``val/``) is ranked on that. With
``val_split`` 0 and no such set there is nothing else to rank on: the ranking reads the final test
accuracy and says so (a note, and ``selection`` ``final_acc``). Candidates that did not finish
(unreachable budget, failed or still pending) rank last.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import torch.nn as nn

from filter_templates.core import rundir, trackers
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note
from filter_templates.core.status import DONE, STOPPED
from filter_templates.data import data_facts
from filter_templates.export import default_export_path, export_run, onnx_available
from filter_templates.method.arch import ArchOptions
from filter_templates.method.fit import Budget, parse_budget
from filter_templates.method.latency_table import LatencyTable
from filter_templates.method.runtimes import LatencySetting
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.pruning import adapter as prune
from filter_templates.report import make_report
from filter_templates.report.settings import setting, views_of
from filter_templates.sweep import selection as select
from filter_templates.sweep.engines import EngineOptions
from filter_templates.sweep.grid import Grid, SweepSpec, plan_grid
from filter_templates.sweep.halving import Driver, Halving, Rung, check_store, run_rungs
from filter_templates.sweep.plan import SweepResult
from filter_templates.sweep.selection import SELECTIONS, BudgetCell, Choice
from filter_templates.sweep.store import DEFAULT_FILE, Store, store_group
from filter_templates.training import profile as machine_profile
from filter_templates.training.config import PRUNE_METHODS, PRUNING, RECIPE_FIELDS, TEMPLATE

__all__ = [
    "reduce",
    "ReduceRequest",
    "rank",
    "Candidate",
    "ReduceResult",
    "DB_FILE",
    "RUNS_DIR",
    "REPORT_DIR",
    "SELECTIONS",
]

DB_FILE = DEFAULT_FILE
RUNS_DIR = "runs"
REPORT_DIR = "report"


@dataclass
class Candidate:
    """One template fitted to the budget and trained (its seeds pooled). Accuracies are means over
    the finished seeds: ``val_acc`` on the validation split (what ranks), ``final_acc`` on the test
    set (what is reported), ``best_acc`` the best test accuracy over epochs (optimistic: the epoch
    is picked on the test set; never used to select)."""

    template: str
    width: float | None
    filters: list[int] | None
    params: int | None
    flops: int | None
    train_memory_bytes: int | None
    final_acc: float | None
    best_acc: float | None
    status: str  # done, failed, pending, unreachable or stopped (by successive halving)
    reason: str | None = None
    seeds_done: int = 0
    run_dir: str | None = None  # the finished seed with the best value of the selection metric
    val_acc: float | None = None
    kind: str = "template"  # or "pruning": a pruning baseline (prune.py), its method in ``template``
    pruned: dict[str, Any] | None = None  # a pruning baseline's ratio and per-layer counts (run_dir's seed)
    stopped_at: int | None = None  # successive halving stopped it after this rung's epochs (status stopped)
    cost: float | None = None  # the budget's resource (what breaks a tie; None: its parameter count)
    separation: dict[str, Any] | None = None  # against the winner: difference, interval, p, tied, images, seeds
    tied: bool | None = None  # not separable from the most accurate candidate (None: not finished)
    latency: dict[str, Any] | None = None  # a latency budget's record of the fitted model (runtimes.Runtime.record)

    @classmethod
    def from_cell(cls, cell: BudgetCell, selection: str = "val_acc") -> "Candidate":
        runs = sorted(cell.done, key=lambda r: (-(r.get(selection) or 0.0), r["seed"]))

        def integer(name: str) -> int | None:
            v = cell.resource(name)
            return None if v is None else int(v)

        return cls(
            template=cell.method,
            width=cell.width,
            filters=cell.filters,
            params=integer("params"),
            flops=integer("flops"),
            train_memory_bytes=integer("train_memory_bytes"),
            final_acc=cell.acc("final"),
            best_acc=cell.acc("best"),
            status=cell.status,
            reason=None if cell.status == DONE else cell.reason,
            seeds_done=len(runs),
            run_dir=runs[0]["run_dir"] if runs else None,
            val_acc=cell.acc("val"),
            kind=PRUNING if cell.method in PRUNE_METHODS else TEMPLATE,
            pruned=_pruned(runs[0]["run_dir"]) if runs and cell.method in PRUNE_METHODS else None,
            cost=cell.cost,
            latency=cell.latency_record(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "template": self.template,
            "width": self.width,
            "filters": self.filters,
            "params": self.params,
            "flops": self.flops,
            "train_memory_bytes": self.train_memory_bytes,
            "val_acc": self.val_acc,
            "final_acc": self.final_acc,
            "best_acc": self.best_acc,
            "seeds_done": self.seeds_done,
            "status": self.status,
            "reason": self.reason,
            "run_dir": self.run_dir,
            "stopped_at": self.stopped_at,
            "tied": self.tied,
            "separation": self.separation,
            **({"latency": self.latency} if self.latency is not None else {}),
            **({"pruned": self.pruned} if self.kind == "pruning" else {}),
        }


def _pruned(run_dir: str | None) -> dict[str, Any] | None:
    """What a pruning run's summary says of its pruned model: ratio, budget use, per-layer counts."""
    s = rundir.read_json(Path(run_dir) / rundir.SUMMARY) if run_dir else None
    p = (s or {}).get("pruned") or {}
    return {k: p[k] for k in ("ratio", "value", "layers", "source") if k in p} or None


def rank(candidates: Sequence[Candidate], order: Sequence[str] = (), selection: str = "val_acc") -> list[Candidate]:
    """Finished candidates by :func:`sweep.selection.rank_key` (the mean of ``selection``, ``val_acc``
    or ``final_acc``, higher first; ties to the cheaper in the budget's resource, then ``order``);
    then those successive halving stopped, the later rung first, each rung as ranked there; the
    unfinished after them, in ``order``."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    pos = {t: i for i, t in enumerate(order)}

    def key(c: Candidate) -> tuple:
        score = getattr(c, selection)
        cost = c.cost if c.cost is not None else c.params
        where = pos.get(c.template, len(pos))
        if c.status == DONE and score is not None:
            return (0, 0, select.rank_key(score, cost, where))
        if c.status == STOPPED:
            return (1, -(c.stopped_at or 0), select.rank_key(c.val_acc, cost, where))
        return (2, 0, select.rank_key(None, None, where))

    return sorted(candidates, key=key)


def with_choice(candidates: Sequence[Candidate], choice: Choice) -> list[Candidate]:
    """``candidates`` with each finished one's tie flag and separation from the winner filled in."""
    out = []
    for c in candidates:
        if c.template in choice.separations:
            sep = choice.separations[c.template]
            # the difference is the winner's; ``tied`` says whether the candidate could have won
            against = None if sep is None else {k: v for k, v in sep.to_dict().items() if k != "tied"}
            c = dataclasses.replace(c, tied=c.template in choice.tied, separation=against)
        out.append(c)
    return out


@dataclass
class ReduceResult:
    """What ``reduce`` found: the ranked candidates, the winner and where everything is."""

    model: str
    budget: Budget
    dataset: str
    epochs: int
    seeds: list[int]
    out: Path
    candidates: list[Candidate]
    sweep: SweepResult
    selection: str = "val_acc"  # what ranks the candidates (SELECTIONS)
    val_split: int | float = 0  # as given or defaulted
    val_images: int = 0  # the validation set's size
    recipe: dict[str, Any] = field(default_factory=dict)  # its name and every setting the candidates trained with
    test_views: int | list[int] | None = None  # views per test image of the final evaluation (None: none done)
    exported: str | None = None
    report: str | None = None
    halving: dict[str, Any] | None = None  # rate, each rung's candidates, scores and survivors, epochs trained
    choice: Choice | None = None  # the winner, the most accurate and those tied with it
    more_seeds: dict[str, Any] | None = None  # what --seeds-until-separable trained, and whether the top separated
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def winner(self) -> Candidate | None:
        """The cheapest candidate not separable from the most accurate (:func:`sweep.selection.choose`)."""
        name = self.choice.winner if self.choice is not None else None
        return next((c for c in self.candidates if c.template == name), None)

    @property
    def separable(self) -> bool | None:
        """Whether the most accurate candidate is separable from every other (None: none finished)."""
        return None if self.choice is None or self.choice.top is None else len(self.choice.tied) == 1

    def to_dict(self) -> dict[str, Any]:
        w = self.winner
        return {
            "selection": self.selection,
            "model": self.model,
            "budget": self.budget.to_dict(),
            "dataset": self.dataset,
            "val_split": self.val_split,
            "val_images": self.val_images,
            "recipe": self.recipe,
            "test_views": self.test_views,
            "candidates": [c.to_dict() for c in self.candidates],
            "winner": None
            if w is None
            else {
                "template": w.template,
                "width": w.width,
                "run_dir": w.run_dir,
                "val_acc": w.val_acc,
                "final_acc": w.final_acc,
                "exported": self.exported,
            },
            "most_accurate": None if self.choice is None else self.choice.top,
            "tied": [] if self.choice is None else self.choice.tied,
            "tie_resource": None if self.choice is None else self.choice.resource,
            "separable": self.separable,
            "seeds_until_separable": self.more_seeds,
            "epochs": self.epochs,
            "seeds": self.seeds,
            "db": str(self.out / DB_FILE),
            "report": self.report,
            "halving": self.halving,
            "wall_s": round(self.wall_s, 3),
        }


def _export(run_dir: str) -> str:
    """The winner's model beside its weights: ONNX where possible, else TorchScript. An export
    newer than the weights (a re-run of the same reduce) is kept."""
    fmt = "onnx" if onnx_available() else "torchscript"
    path = default_export_path(run_dir, fmt)
    weights = Path(run_dir) / rundir.MODEL
    if path.is_file() and weights.is_file() and path.stat().st_mtime >= weights.stat().st_mtime:
        return str(path)
    return str(export_run(run_dir, fmt))


def _check_out(out: Path) -> Path:
    """``--out`` and what reduce keeps in it, refused before anything is read, fitted or trained."""
    rundir.check_writable(out, "--out", folder=True)
    for name, folder in ((DB_FILE, False), (RUNS_DIR, True), (REPORT_DIR, True)):
        p = out / name
        if p.exists() and p.is_dir() != folder:
            what = "its results store" if name == DB_FILE else f"its {name} folder"
            raise UsageError(f"--out {out}: {p} is a {'file' if folder else 'folder'}, where reduce keeps {what}")
    if (out / DB_FILE).is_file():  # a file that is not a results store is refused now, not after the data
        Store(out / DB_FILE, create=False).close()
    return out


@dataclass
class ReduceRequest:
    """What :func:`reduce` does: fit every template of ``templates`` (default: all five; base is
    always added) of ``model`` to ``budget``, built with ``options`` (divisor, floor, as-published,
    a user network's reading; the image size is the dataset's); train them on
    ``dataset`` for each of ``seeds`` (``train``: TrainConfig settings such as epochs, lr,
    limit_train, val_split; None values are ignored; an absent val_split is
    :func:`data.split.default`) with ``engine``; rank them on the validation split; write the
    report (``report``) and export the winner (``export``), everything under ``out``.
    ``baselines``: pruning baselines trained beside the templates at the same budget, epochs and
    recipe, ranked with them. ``model``: a family name, ``package.module:function``, or in Python
    an ``nn.Module`` or a callable returning one; an object lives in this process only, so its
    candidates train here, one after another (the local engine without ``jobs``)."""

    model: str | nn.Module | Callable[..., nn.Module]
    budget: Union[Budget, str]
    dataset: str
    templates: Sequence[str] | None = None
    seeds: Sequence[int] = (0,)
    train: Mapping[str, Any] | None = None
    options: ArchOptions = ArchOptions()
    out: str | os.PathLike[str] = "reduce"
    engine: EngineOptions | None = None
    report: bool = True
    export: bool = True
    baselines: prune.Baselines | None = None
    halving: Halving | None = None  # successive halving of the candidates (None: every one trains to the end)
    seeds_until_separable: int | None = None  # train more seeds of the tied top candidates, up to this many each
    latency: LatencySetting | None = None  # how a latency budget is measured (None: eager torch, batch 1)
    latency_table: LatencyTable | None = None  # or the target's latency table it is fitted against


def _model(r: ReduceRequest) -> str:
    """The family name of the request's model, loaded in this process (a ``package.module:function``
    named in Python is the caller's decision to import it, as a flag is); an object is refused with
    an engine that trains in other processes, which cannot import it."""
    engine = r.engine or EngineOptions()
    if not isinstance(r.model, str) and (engine.engine != "local" or (engine.jobs or 1) > 1):
        raise UsageError(
            "a model given as a Python object trains in this process only: use the local engine without "
            "jobs, or name it as 'package.module:function'"
        )
    return r.options.replace(image_size=(r.train or {}).get("image_size")).family(r.model)


def _sweep_spec(r: ReduceRequest, budget: Budget, names: list[str], base: prune.Baselines) -> SweepSpec:
    """The one-budget grid the request asks for: every template and baseline, every seed."""
    return SweepSpec(
        models=[_model(r)],
        templates=names,
        widths=[],
        datasets=[r.dataset],
        seeds=list(r.seeds),
        budgets=[f"{budget.key}={budget.value!r}"],
        options=r.options,
        baselines=list(base.names),
        prune_at=base.at,
        prune_from=base.from_width,
        train=_with_val_split(r.dataset, _logged(r, budget)),
        latency=r.latency,
        latency_table=r.latency_table,
    )


def _logged(r: ReduceRequest, budget: Budget) -> dict[str, Any]:
    """The request's training settings (None values dropped), its runs logged as one group (named
    for the output folder), with the budget among each run's hyperparameters."""
    settings = {k: v for k, v in (r.train or {}).items() if v is not None}
    if settings.get("log") is not None:
        settings["log"] = trackers.prepare(settings["log"], store_group(Path(r.out) / DB_FILE), str(budget))
    return settings


def reduce(request: ReduceRequest, *, progress: bool | None = None) -> ReduceResult:
    """Run ``request`` (:class:`ReduceRequest`). Bad input, and a budget no template can reach, is a
    UsageError before anything trains."""
    t0 = time.perf_counter()
    r = request
    dataset = r.dataset
    budget = parse_budget(r.budget) if isinstance(r.budget, str) else r.budget
    names = list(dict.fromkeys(["base", *(r.templates or BUILTIN_TEMPLATES)]))
    base = r.baselines or prune.Baselines()
    out = _check_out(Path(r.out))  # before the data are read for the default validation split
    spec = _sweep_spec(r, budget, names, base)
    model = spec.models[0]
    grid = plan_grid(spec)  # validates everything, reads the data, fits every template
    if not grid.configs:  # every template's smallest model is over the budget: nothing to compare
        raise UsageError(str(grid.unreachable[0].reason))
    first_config = grid.configs[0]
    # one dataset and one set of settings: the same for every candidate
    val_images = data_facts(first_config).val_images(first_config.val_split, first_config.batch_size)
    machine_profile.check(first_config.profile)  # a corrupt machine profile would fail every run
    selection = "val_acc" if val_images else "final_acc"
    if selection == "final_acc":
        note(
            "val_split 0: no validation split, so the candidates are ranked on their final test accuracy and the "
            "winner's test accuracy is optimistic (it was selected on the test set)"
        )
    db, runs = out / DB_FILE, out / RUNS_DIR
    epochs, first = first_config.epochs, first_config
    check_store(db, grid, r.halving, epochs)  # before anything is written
    order = [*names, *base.names]
    engine = r.engine or EngineOptions()
    if not isinstance(r.model, str) and engine.engine == "local" and engine.jobs is None:
        engine = dataclasses.replace(engine, jobs=1)  # a model object lives in this process: one run at a time
    driver = Driver(grid, db, runs, engine, selection, order, progress)
    rungs: list[Rung] = []
    if r.halving is None:
        sweep = driver.run(grid)
    else:
        rungs, sweeps = run_rungs(r.halving, epochs, driver)
        sweep = _merged(sweeps)
    rows = driver.read()
    choice = select.choose(select.pool(rows), selection, order)
    more = None
    if r.seeds_until_separable is not None:
        rows, choice, more = _seeds_until_separable(r, spec, driver, rows, choice)
    cells = select.pool(rows)
    ranked = rank(_stopped([Candidate.from_cell(c, selection) for c in cells], rungs), order, selection)
    result = ReduceResult(
        model=model,
        budget=budget,
        dataset=dataset,
        epochs=int(epochs),
        seeds=list(spec.seeds),
        out=out.resolve(),
        candidates=with_choice(ranked, choice),
        sweep=sweep,
        selection=selection,
        val_split=first.val_split,
        val_images=val_images,
        test_views=_test_views(cells),
        recipe=_recipe(first),
        choice=choice,
        more_seeds=more,
    )
    if r.halving is not None:
        result.halving = {"rate": r.halving.rate, "rungs": [g.to_dict() for g in rungs], **_epochs_trained(rows)}
    if r.report:
        written = make_report(db, out / REPORT_DIR, progress=progress)
        result.report = str(Path(written["index"]).resolve())
    if r.export and result.winner is not None and result.winner.run_dir:
        result.exported = _export(result.winner.run_dir)
    result.wall_s = time.perf_counter() - t0
    return result


def _recipe(config: Any) -> dict[str, Any]:
    """The recipe the candidates trained with, read as the report reads it (``report.settings``:
    ``tta`` off where the dataset's mirror images are not of their class, as training turns it
    off), so ``--json`` and the report never disagree on a setting."""
    s = setting(config.to_dict())
    return {"name": s.get("recipe"), **{k: s.get(k) for k in RECIPE_FIELDS}}


def _seeds_until_separable(
    r: ReduceRequest, spec: SweepSpec, driver: Driver, rows: list[dict[str, Any]], choice: Choice
) -> tuple[list[dict[str, Any]], Choice, dict[str, Any]]:
    """Train one more seed of every candidate tied with the most accurate, round by round, until the
    most accurate is separable from all others or each tied candidate has ``r.seeds_until_separable``
    seeds; the rows and choice after it, and what it trained. Each round is an ordinary grid of the
    same store (the seed numbers follow the request's), so the same command resumes it and a
    finished round trains nothing again."""
    limit = r.seeds_until_separable
    assert limit is not None
    seeds, added, grid = list(spec.seeds), [], driver.grid
    points = list(grid.budget_points)
    while len(choice.tied) > 1 and len(seeds) < limit:
        seed = max(seeds) + 1
        tied = set(choice.tied)
        more = plan_grid(
            dataclasses.replace(
                spec,
                templates=[t for t in spec.templates if t in tied],
                baselines=[b for b in spec.baselines if b in tied],
                seeds=[seed],
            )
        )
        note(f"{', '.join(choice.tied)} tied on {len(seeds)} seed(s): training seed {seed} of each")
        driver.run(more)
        points += more.budget_points
        seeds.append(seed)
        added.append({"seed": seed, "candidates": [t for t in choice.tied]})
        driver = dataclasses.replace(driver, grid=Grid(configs=grid.configs, budget_points=points))
        rows = driver.read()
        choice = select.choose(select.pool(rows), driver.selection, driver.order)
    return rows, choice, {"limit": limit, "rounds": added, "separable": len(choice.tied) <= 1}


def _stopped(candidates: list[Candidate], rungs: Sequence[Rung]) -> list[Candidate]:
    """``candidates`` with those successive halving stopped marked so: status ``stopped``, the
    rung's epochs and its score as ``val_acc``, no final accuracies."""
    stopped = {t: g for g in rungs[:-1] for t in g.candidates if t not in g.survivors}
    out = []
    for c in candidates:
        g = stopped.get(c.template)
        if g is not None:
            c = dataclasses.replace(
                c,
                status=STOPPED,
                stopped_at=g.epochs,
                val_acc=g.scores.get(c.template),
                final_acc=None,
                best_acc=None,
                reason=None,
                seeds_done=0,
                run_dir=None,
            )
        out.append(c)
    return out


def _merged(sweeps: Sequence[SweepResult]) -> SweepResult:
    """One account of a reduce's rungs: the first rung's points and skips, every rung's runs."""
    total = dataclasses.replace(sweeps[0], failures=list(sweeps[0].failures))
    for s in sweeps[1:]:
        total.done, total.failed, total.paused = total.done + s.done, total.failed + s.failed, total.paused + s.paused
        total.failures += s.failures
        total.interrupted, total.elsewhere = total.interrupted or s.interrupted, s.elsewhere
        total.wall_s += s.wall_s
    return total


def _epochs_trained(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Epochs trained over every run (all seeds, every stage), and what training each to the end
    of its schedule would be: a plain reduce's."""
    runs = {p["run"]["key"]: p["run"] for p in rows if p.get("run")}.values()
    return {
        "epochs_trained": sum(len(r["epoch_metrics"]) for r in runs),
        "epochs_plain": sum(int(r["epochs"]) for r in runs),
    }


def _with_val_split(dataset: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with reduce's default validation split when it names none."""
    if "val_split" in settings:
        return settings
    return {**settings, "val_split": data_facts({**settings, "dataset": dataset}).default_val_split()}


def _test_views(cells: Sequence[BudgetCell]) -> int | list[int] | None:
    """The views per test image of the finished runs' final evaluation, as the report counts them
    (:func:`report.settings.views_of`): one number (all alike), all of them (they differ), or None
    (none finished)."""
    views = sorted({views_of(c.setting) for c in cells if c.done})
    return None if not views else views[0] if len(views) == 1 else views
